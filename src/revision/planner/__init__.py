"""The planner (REVISION-R1): training data, models, SFT and GRPO, inference backends.

Inference never imports training code: `revision.planner.rewards` and the decoders are light,
the trainers (torch, TRL) are imported only by the commands that train.
"""
