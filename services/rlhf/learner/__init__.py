"""The learner: PPO with a KL penalty against the reference policy, over the three model services."""
