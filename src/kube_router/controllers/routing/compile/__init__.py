"""The routing controller's pure half: BGP settings, peers, advertised paths, policies and
communities computed from the flags, Nodes and Services (no I/O; scripts/layers.py checks it)."""
