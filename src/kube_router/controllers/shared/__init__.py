"""Facts more than one controller needs, below all of them: a node's pod CIDRs, the Service
behind an EndpointSlice, a Service's addresses and the ranges they are checked against."""
