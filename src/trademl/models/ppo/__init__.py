"""The PPO agent: trading environment (env.py, vec_env.py), reward shaping (rewards.py),
SB3 training with evaluation and checkpoints (train.py), ONNX export (export.py).

Importing this package loads neither torch nor stable-baselines3: the serving runtime
(`trademl.predict.runtime_ppo`) reuses the observation layout of env.py.
"""
