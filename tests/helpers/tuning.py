"""Shared tuning-study configs for the tests (not a test module)."""


def toy_config(**over):
    """A 2D study: r(x) = x_1 on the exact GMM, right-CVaR_0.9 objective, ~0.5 s per trial."""
    cfg = {
        "kind": "toy2d",
        "base": {"model": "gmm-exact", "reward": {"name": "linear", "w": [1.0, 0.0]}, "alpha": 1.0,
                 "beta_right": 0.9, "eval_samples": 2000, "eval_steps": 20, "kl_samples": 200,
                 "tfft": {"offline_samples": 3000, "offline_steps": 20, "bootstrap": 0,
                          "am": {"steps": 60, "batch_size": 64, "time_steps": 20, "loss_time_steps": 6,
                                 "lr": 0.003, "grad_clip": 0.0}}},
        "space": {"beta": [0.8, 0.95], "alpha": [0.05, 2.0]},
        "objectives": [{"metric": "cvar", "direction": "maximize"}],
        "eval_tail": "right", "eval_beta": 0.9,
        "sampler": "tpe", "seed": 0, "n_startup_trials": 4, "pruner": "none",
        "heartbeat_interval": 1, "grace_period": 3,
    }
    cfg.update(over)
    return cfg
