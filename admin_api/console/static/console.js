// Progressive enhancement only: every page works without this file.
"use strict";

// `gatekeeper up` prints /console/#token=...: the fragment never reaches the server or its
// logs. Post it through the sign-in form and wipe it from the address bar and history.
function signInFromFragment() {
  const form = document.getElementById("sign-in");
  const match = /^#token=(.+)$/.exec(window.location.hash);
  if (!form || !match) {
    return;
  }
  history.replaceState(null, "", window.location.pathname);
  form.elements.namedItem("token").value = decodeURIComponent(match[1]);
  form.submit();
}

// Copy buttons next to secrets shown once; hidden until this script can make them work.
function enableCopyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const field = document.getElementById(button.dataset.copy);
    if (!field || !navigator.clipboard) {
      continue;
    }
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(field.value);
        button.textContent = "Copied";
      } catch {
        field.select();
        button.textContent = "Select and copy";
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  signInFromFragment();
  enableCopyButtons();
});
