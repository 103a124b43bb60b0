r"""Masked self-pretraining on the task's own inputs, then fine-tuning,
against training from scratch (docs/pretraining.md).

  python -m experiments.sweep \
      --config=experiments/configs/listops.py:small_cpu \
      --sweep=experiments/sweeps/pretraining.py:families \
      --workdir=runs/pretraining --target=eval_accuracy:0.3

Variants (`NAME[:SEEDS]`):
  families  simmim and transformer, 3 seeds: pretrained for PRETRAIN_STEPS
            (token masking of 15%) then fine-tuned for the config's
            num_steps; from scratch for the config's num_steps (the family
            sweep's points) and for as many steps as both phases together.
  masking   simmim, 2 seeds: token, span and segment masking at two ratios,
            each pretrained and fine-tuned as above.
  long      simmim, 2 seeds: the `families` design with LONG_PRETRAIN_STEPS
            of pretraining (4 epochs of the inputs instead of 1.2).
  lra       simmim, 2 seeds, with listops.py:lra_cpu: the `families` design
            at LRA length (LRA_PRETRAIN_STEPS of pretraining).
  baselines from scratch, 1 seed: each family at the learning rates of
            BASELINE_LEARNING_RATES (the config's is 1e-3), and simmim
            with the warmups of BASELINE_WARMUP_STEPS (the config's is
            150), so the lift is measured against a tuned baseline.

Each fine-tuning point runs after its pretraining point (`sweep.fine_tune`);
the summary counts the pretraining's steps and time in its columns
`pretrain_steps`, `pretrain_train_seconds`, `total_train_seconds_to_target`.
"""

from simmim_jax import sweep

FAMILIES = ('simmim', 'transformer')
PRETRAIN_STEPS = 750          # small_cpu fine-tunes for 1,500
LONG_PRETRAIN_STEPS = 2500
LRA_PRETRAIN_STEPS = 400      # lra_cpu fine-tunes for 800
FINE_TUNE_STEPS = {'families': 1500, 'masking': 1500, 'long': 1500,
                   'lra': 800}
BASELINE_LEARNING_RATES = (3e-4, 3e-3)
BASELINE_WARMUP_STEPS = (0, 450)
MASKING = {'masking.mode': ('token', 'span', 'segment'),
           'masking.ratio': (0.15, 0.3)}


def _pretraining(family: str, steps: int, seed: int, mode: str = 'token',
                 ratio: float = 0.15) -> dict:
  return {'objective': 'masked', 'best_metric': 'eval_masked_accuracy',
          'masking.mode': mode, 'masking.ratio': ratio,
          'model.family': family, 'num_steps': steps, 'seed': seed}


def _with_and_without(pretraining: dict, total_steps: int) -> list[dict]:
  """A pretraining point, its fine-tuning, and from scratch twice: for the
  fine-tuning's steps (the config's) and for both phases' steps together."""
  scratch = {'model.family': pretraining['model.family'],
             'seed': pretraining['seed']}
  return [pretraining, *sweep.fine_tune([pretraining]), scratch,
          {**scratch, 'num_steps': total_steps}]


def get_sweep(variant: str = 'families'):
  name, _, seeds = variant.partition(':')
  if (name not in (*FINE_TUNE_STEPS, 'baselines') or
      (seeds and not seeds.isdigit())):
    raise ValueError(f"variant is one of {[*FINE_TUNE_STEPS, 'baselines']}, "
                     f"with ':SEEDS' optionally; got {variant!r}")
  seeds = int(seeds) if seeds else {'families': 3, 'baselines': 1}.get(name, 2)
  if name == 'baselines':
    return sweep.with_seeds(sweep.product(
        {'model.family': FAMILIES, 'learning_rate': BASELINE_LEARNING_RATES})
        + sweep.product({'model.family': ('simmim',),
                         'warmup_steps': BASELINE_WARMUP_STEPS}), seeds)
  points = []
  for seed in range(seeds):  # seed-major: a partial sweep compares all
    if name == 'masking':
      pretraining = [_pretraining('simmim', PRETRAIN_STEPS, seed, **axes)
                     for axes in sweep.product(
                         {k.split('.')[1]: v for k, v in MASKING.items()})]
      points += pretraining + sweep.fine_tune(pretraining)
    else:
      steps = {'families': PRETRAIN_STEPS, 'long': LONG_PRETRAIN_STEPS,
               'lra': LRA_PRETRAIN_STEPS}[name]
      for family in FAMILIES if name == 'families' else ('simmim',):
        points += _with_and_without(_pretraining(family, steps, seed),
                                    steps + FINE_TUNE_STEPS[name])
  return points
