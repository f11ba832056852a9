"""kube-router for Python: a Kubernetes node networking agent compatible with kube-router."""
