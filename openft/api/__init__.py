"""HTTP API: thin routes (parse → one domain call → protocol model), auth, and the one error renderer."""
