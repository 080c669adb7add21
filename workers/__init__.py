"""The data plane of pdserve: engine adapters, prefill/decode worker actors, KV transfer, the vLLM KV connector.

Never decides policy (which worker, how many, whether to admit): it executes what the control plane
asks. May import `orchestrator.config`, `orchestrator.request`, `orchestrator.errors` and the generated
stubs in `orchestrator.api.pb`, nothing else of the control plane.
"""
