"""`rlhf demo`: the whole pipeline on the tiny bundled model, with every service a local process."""
