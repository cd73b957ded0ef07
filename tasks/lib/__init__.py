"""Libraries the stages use: reading source files and hub datasets into raw rows, and mapping a
row of a known format (Alpaca, ShareGPT, OpenAI) to chat messages. A library never imports a
stage, so a stage's cache key (its code fingerprint follows imports) changes only when code it
really runs changes, not when another stage is edited.
"""
