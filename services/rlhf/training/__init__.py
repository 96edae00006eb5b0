"""The offline training stages: each reads a dataset, trains a model and writes its dir.

sft.py          `rlhf train sft`: supervised fine-tuning of pi on (prompt, response) pairs
rm.py           `rlhf train rm`: the reward model r_theta from K-wise rankings
dpo.py          `rlhf train dpo`: pi straight from preferences, against a frozen pi_ref
losses.py       their pure losses, one function per equation
preferences.py  preference rows -> per-prompt rankings -> batches of whole prompts (rm and dpo)
normalize.py    folding the mean reward into a bias, after rm training
config.py       the rm and dpo settings
"""
