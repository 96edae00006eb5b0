"""Every PPO setting in one dataclass; `rlhf train ppo --help` is generated from its field docstrings
(rlhf.core.flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from rlhf.core.client import ClientTLS
from rlhf.core.flags import setting
from rlhf.core.training_options import TrainingOptions

DEFAULT_PORT = 50054
Estimator = Literal["gae", "grpo", "rloo", "reinforce++", "reinforce++-baseline"]
GROUP_ESTIMATORS = ("grpo", "rloo", "reinforce++-baseline")  # they compare the samples of a prompt
# `rlhf train grpo`'s defaults: GRPO's own recipe (DeepSeekMath; TRL's num_iterations=1), not PPO's. One pass of
# one minibatch over each batch, where PPO's 4 epochs x 4 minibatches make 16; the KL in the loss, k3,
# ratio-corrected, beta 0.1. On the synthetic task (100 steps x 64 samples) PPO's defaults took 118 s for less
# gain than this recipe's 90 s (issue 22).
GRPO_DEFAULTS = {
    "advantage_estimator": "grpo",
    "samples_per_prompt": 4,
    "ppo_epochs": 1,
    "num_minibatches": 1,
    "kl_in": "loss",
    "kl_estimator": "k3",
    "kl_coef": 0.1,
}


@dataclass
class PPOConfig(TrainingOptions):
    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "policy", "reward", "reference", "prompts", "out")
    # --- run ---
    model: str = ""
    """SFT model dir: pi_RL starts here, and its tokenizer is the one every service must share"""
    policy: str = ""
    """policy replicas, HOST:PORT[,HOST:PORT...]; prompts are spread over all of them"""
    reward: str = ""
    """reward service(s), HOST:PORT[,HOST:PORT...]: a model or a function (`rlhf serve reward --function`);
    several are summed with --reward-weights"""
    reward_weights: str = ""
    """W[,W...]: one weight per --reward service; the reward is the weighted sum of their scores (default 1 each)"""
    reference: str = ""
    """reference-policy service (pi_SFT), HOST:PORT"""
    prompts: str = ""
    """RL prompts, JSONL with a "prompt" field per line: text, or a conversation (a list of messages)"""
    chat_template: str = ""
    """Jinja chat template file for conversational prompts, in place of the policy tokenizer's own"""
    out: str = ""
    """output dir: checkpoints/, metrics.jsonl, tb/ (TensorBoard) and the final policy/"""
    steps: int = 100
    """PPO steps (each: one rollout batch, then the update)"""
    resume: bool = False
    """continue from the latest checkpoint in --out"""
    overwrite: bool = False
    """start over in an --out that holds an earlier run, deleting its checkpoints, logs and policy"""
    value_model: str | None = None
    """value model (critic) init, for --advantage-estimator gae: a reward-model dir or the SFT dir
    (default: --model)"""
    seed: int = 0
    """seed for prompt order, sampling and initialisation"""
    device: str = "auto"
    """where the learner's models train: auto, cpu, cuda, mps"""
    # --- rollout ---
    batch_size: int = 64
    """prompts per step; the step trains on --batch-size x --samples-per-prompt samples"""
    samples_per_prompt: int = 1
    """responses sampled per prompt: a group, kept on one replica (GRPO, RLOO and REINFORCE++-baseline
    compare the samples of a group, so they need 2 or more)"""
    max_new_tokens: int = 32
    """longest response sampled"""
    min_new_tokens: int = 0
    """shortest response sampled: EOS is held back until this many tokens (HF's min_new_tokens, vLLM's
    min_tokens), so a reward model that scores the empty response high cannot be gamed with it"""
    max_length: int = 512
    """longest prompt plus response in tokens; longer prompts are skipped, ptx text is truncated"""
    rollout_ahead: int = 0
    """async rollouts: the services generate, score and take reference log-probs for up to N future steps'
    batches while the learner computes the current update (0: lockstep, each step collects then trains);
    stale samples are corrected by the decoupled PPO objective (--importance-cap; docs/async.md)"""
    max_staleness: int | None = None
    """how many weight versions behind a sample may be and still be trained on; older ones are dropped,
    counted and regenerated (default: --rollout-ahead)"""
    service_timeout: float = 300.0
    """the retry budget: seconds to keep retrying a service that is UNAVAILABLE or past its deadline before
    giving up"""
    rpc_timeout: float = 120.0
    """the deadline of each call to a service (Generate, Score, LogProbs, UpdateWeights): a call that hangs
    fails DEADLINE_EXCEEDED after this long and is retried within --service-timeout"""
    connect_timeout: float = 5.0
    """at start, before any model loads: seconds for each service's address to answer before the run
    fails (raise it where services may start after the learner)"""
    # --- rewards with the KL penalty ---
    kl_coef: float = 0.05
    """beta: weight of the per-token KL penalty (the initial value when --target-kl is set)"""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """per-token KL estimator: k1 (log ratio) or k3 (non-negative, lower variance)"""
    target_kl: float | None = None
    """turn on the adaptive KL controller: adjust beta so the KL per sequence tracks this (default off)"""
    kl_horizon: int = 10000
    """adaptive controller horizon, in samples (Ziegler et al.)"""
    missing_eos_penalty: float | None = None
    """subtract this from the score of responses that hit --max-new-tokens without EOS (default off)"""
    kl_in: Literal["reward", "loss"] = "reward"
    """where the KL penalty goes: into the per-token reward (InstructGPT), or into the loss as
    beta * KL_t, differentiated (GRPO's; needs --kl-estimator k3)"""
    kl_ratio_correction: bool = True
    """--kl-in loss: weight each token's KL term by pi_RL/pi_old (1 on-policy, differentiated; TRL's
    use_bias_correction_kl), which makes its gradient the unbiased one of KL(pi_RL || pi_SFT); without it,
    k3's gradient is on average the forward KL's"""
    # --- advantages ---
    advantage_estimator: Estimator = "gae"
    """gae: PPO with a value model (critic); the others are critic-free, and build no value model:
    grpo (group-normalised), rloo (leave-one-out baseline), reinforce++ (batch-normalised returns),
    reinforce++-baseline (group mean subtracted first)"""
    std_normalization: bool = True
    """grpo: divide by the group's reward std; --no-std-normalization gives Dr. GRPO"""
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    """how the policy loss (and a KL loss) reduces over tokens: the mean over all tokens, or per
    response first (its token mean, or its token sum), then the mean over responses"""
    gamma: float = 1.0
    """discount factor"""
    lam: float = 0.95
    """GAE lambda"""
    whiten_advantages: bool = True
    """gae: normalise advantages to zero mean and unit variance per batch (the critic-free estimators
    normalise as their papers do)"""
    # --- update ---
    lr: float = 1e-5
    """AdamW learning rate for the policy and the value model"""
    adam_eps: float = 1e-5
    """AdamW epsilon (1e-5 as in the PPO reference implementations; Hugging Face's default is 1e-8)"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over the run"""
    ppo_epochs: int = 4
    """passes over each rollout batch"""
    num_minibatches: int = 4
    """optimizer steps per epoch"""
    gradient_accumulation_steps: int = 1
    """micro-batches per minibatch (forward/backward in pieces to save memory)"""
    early_stop_kl: float | None = None
    """end a step's PPO epochs early once a minibatch's approx KL(old || new) exceeds this, skipping its
    update (CleanRL's and Stable-Baselines3's target_kl): a guard against one rollout moving the policy
    too far (default off)"""
    clip_range: float = 0.2
    """policy ratio clip epsilon"""
    clip_range_value: float = 0.2
    """value clip: how far a value may move from its rollout estimate"""
    importance_cap: float = 2.0
    """the decoupled PPO objective's truncated importance weight: each token's policy loss is weighted by
    min(pi_prox/pi_sampler, cap), pi_prox the learner's weights at the update's start, correcting for samples
    drawn with stale weights (--rollout-ahead) or by bfloat16 replicas; 0 turns it off (docs/async.md)"""
    vf_coef: float = 0.1
    """weight of the value loss"""
    max_grad_norm: float = 1.0
    """gradient clipping norm"""
    # --- PPO-ptx ---
    ptx_data: str | None = None
    """pretraining text, JSONL with a "text" field, to counter forgetting (PPO-ptx; default off)"""
    ptx_coef: float = 1.0
    """gamma: weight of the pretraining log-likelihood term"""
    ptx_batch_size: int = 8
    """pretraining sequences per minibatch"""
    # --- bookkeeping ---
    save_every: int = 50
    """write a checkpoint every N steps (also on Stop and SIGTERM)"""
    keep_checkpoints: int = 2
    """how many checkpoints to keep"""
    log_rollouts: bool = False
    """append each step's prompts, responses, scores and weights versions to rollouts.jsonl"""

    @property
    def uses_critic(self) -> bool:
        return self.advantage_estimator == "gae"

    @property
    def staleness_limit(self) -> int:
        """--max-staleness, by default --rollout-ahead."""
        return self.rollout_ahead if self.max_staleness is None else self.max_staleness

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.samples_per_prompt

    @property
    def reward_targets(self) -> list[str]:
        return [t.strip() for t in self.reward.split(",") if t.strip()]

    @property
    def reward_weight_values(self) -> list[float] | None:
        """--reward-weights as floats (None: 1 each); UserError if they do not parse or match --reward."""
        from rlhf.core.errors import UserError

        if not self.reward_weights.strip():
            return None
        try:
            weights = [float(w) for w in self.reward_weights.split(",")]
        except ValueError:
            raise UserError(f"--reward-weights {self.reward_weights!r}: expected numbers W[,W...]") from None
        if len(weights) != len(self.reward_targets):
            raise UserError(
                f"--reward-weights has {len(weights)} weights for {len(self.reward_targets)} --reward services"
            )
        return weights

    @property
    def policy_targets(self) -> list[str]:
        return [t.strip() for t in self.policy.split(",") if t.strip()]


@dataclass
class LearnerProcess:
    """`rlhf train ppo` settings of the learner process rather than of its run: how it reaches the services (its
    bearer token is the server's --auth-token-file) and how it exits."""

    service_tls: ClientTLS = setting(factory=ClientTLS, prefix="service_")
    """TLS towards the policy, reward and reference services: --service-tls-ca, --service-tls-cert,
    --service-tls-key"""
    signal_exit_code: int = setting(0, metavar="N")
    """exit status after SIGTERM or Ctrl-C stopped the run, checkpointed, before its last step: the ppo Job sets
    143, so that an evicted learner counts as failed (and is replaced, or fails a multi-pod Job), not as done"""


def validate(config: PPOConfig) -> PPOConfig:
    """Refuse settings that cannot work, with a one-line message."""
    from rlhf.core.errors import UserError

    checks = [
        (config.steps > 0, "--steps must be positive"),
        (not (config.resume and config.overwrite), "--resume and --overwrite exclude each other"),
        (bool(config.policy_targets), "--policy needs at least one HOST:PORT"),
        (bool(config.reward_targets), "--reward needs at least one HOST:PORT"),
        (config.batch_size > 0, "--batch-size must be positive"),
        (config.samples_per_prompt > 0, "--samples-per-prompt must be positive"),
        (
            config.samples_per_prompt >= 2 or config.advantage_estimator not in GROUP_ESTIMATORS,
            f"--advantage-estimator {config.advantage_estimator} compares the samples of a prompt: "
            "it needs --samples-per-prompt 2 or more",
        ),
        (
            config.samples_per_step >= config.num_minibatches > 0,
            "--batch-size x --samples-per-prompt must be >= --num-minibatches >= 1",
        ),
        (config.gradient_accumulation_steps > 0, "--gradient-accumulation-steps must be positive"),
        (config.ppo_epochs > 0, "--ppo-epochs must be positive"),
        (config.max_new_tokens > 0, "--max-new-tokens must be positive"),
        (0 <= config.min_new_tokens <= config.max_new_tokens, "--min-new-tokens must lie in [0, --max-new-tokens]"),
        (config.max_length > config.max_new_tokens, "--max-length must exceed --max-new-tokens"),
        (config.target_kl is None or config.target_kl > 0, "--target-kl must be positive"),
        (config.early_stop_kl is None or config.early_stop_kl > 0, "--early-stop-kl must be positive"),
        (config.rollout_ahead >= 0, "--rollout-ahead must be >= 0"),
        (
            config.staleness_limit >= config.rollout_ahead,
            f"--max-staleness {config.max_staleness} is below --rollout-ahead {config.rollout_ahead}: every batch "
            "generated that far ahead would be dropped",
        ),
        (config.importance_cap == 0 or config.importance_cap >= 1, "--importance-cap must be 0 (off) or >= 1"),
        (config.save_every > 0, "--save-every must be positive"),
        (config.service_timeout > 0, "--service-timeout must be positive"),
        (config.rpc_timeout > 0, "--rpc-timeout must be positive"),
        (
            config.kl_in == "reward" or config.kl_estimator == "k3",
            "--kl-in loss needs --kl-estimator k3: k1's gradient in the loss is zero on average",
        ),
        (config.connect_timeout > 0, "--connect-timeout must be positive"),
        (0 < config.lam <= 1 and 0 < config.gamma <= 1, "--gamma and --lam must lie in (0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    config.check_training_options()
    config.reward_weight_values  # noqa: B018 - raises if the weights do not parse or match
    return config
