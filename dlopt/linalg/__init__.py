"""Matrix helpers of the matrix optimizers (Newton-Schulz orthogonalization for Muon)."""
