"""The network routing controller (NRC): pod networking over BGP, CNI, overlay tunnels."""
