"""Network policy controller: Kubernetes NetworkPolicy enforced with iptables and ipsets.

``compile`` (with ``names``, ``selectors`` and the modules it is split into) is pure: objects in,
desired chains and sets out.
"""
