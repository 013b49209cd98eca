"""The command-line tools' code (layer 6). Their entry points are the thin modules
``python -m sam3_lora_plugin.{train,evaluate,predict,doctor,inventory}``.
"""
