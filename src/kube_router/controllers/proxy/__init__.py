"""The service proxy (NSC): Services through IPVS."""
