// Starts Swagger UI (the bundle served beside this file) on the admin API's own OpenAPI
// document. A file rather than an inline script, so the page's CSP can say script-src 'self'.
"use strict";

window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    // Relative to the page, so the explorer also works behind a path prefix.
    url: new URL(root.dataset.openapi, document.baseURI).href,
    domNode: root,
    deepLinking: true,
    tryItOutEnabled: true,
    displayRequestDuration: true,
    // The token lives as long as the page: not written to localStorage.
    persistAuthorization: false,
    // Never ask validator.swagger.io (or anything else off this server) about the document.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
