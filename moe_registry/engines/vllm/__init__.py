"""vLLM inside and beside the registry: its MoE choice executed (:mod:`.executed`), a general plugin
that consults the registry per MoE layer (:mod:`.plugin`), names between the two (:mod:`.names`) and
a torch-free model of its oracles (:mod:`.model`). Importing this package imports neither vLLM nor
torch; only the child process of :mod:`.executed` and the plugin, once vLLM loads it, do."""
