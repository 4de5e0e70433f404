"""Pure rules of the product: who a device is, what its keys look like, how the edge's view is
encoded. No I/O."""
