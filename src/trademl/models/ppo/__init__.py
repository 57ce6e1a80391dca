"""The PPO agent: trading environment (env.py, vec_env.py), reward shaping (rewards.py),
SB3 training with evaluation and checkpoints (train.py) by PPO, A2C or SAC (algorithms.py),
ONNX export (export.py), and the observation layout (observation.py, numpy only).

Importing this package loads neither torch, stable-baselines3 nor gymnasium: the serving
runtime (`trademl.models.kinds.ppo`) imports observation.py alone.
"""
