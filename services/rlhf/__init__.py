"""rlhf: SFT, reward modelling and PPO as gRPC services.

Packages:
    rlhf.core       shared server bootstrap, batching, wire codecs, model loading, tiny model, synthetic task
    rlhf.reward     reward-model training and the RewardScoring service
    rlhf.policy     supervised fine-tuning and the PolicyInference service
    rlhf.reference  the ReferencePolicy service (frozen pi_SFT log-probs)
    rlhf.learner    the PPO learner and its Learner control service
    rlhf.v1         generated gRPC stubs (do not edit; `make protos`)
"""

__version__ = "0.1.0"
