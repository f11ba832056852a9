"""The BGP engine: gobgpd as a supervised child process, driven over gRPC."""
