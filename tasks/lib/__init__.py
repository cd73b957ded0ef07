"""Libraries the stages run: reading sources, text units and token counts, categories, toxicity,
decontamination, scorers and the judge, the tiny model, the chat template and mask audit, the
training process and its launch, the mixture arithmetic and shards, the evaluation measurements
and report, and the cards. A library never imports a stage, so a stage's cache key (its code
fingerprint follows imports) changes only when code it really runs changes, not when another
stage is edited.
"""
