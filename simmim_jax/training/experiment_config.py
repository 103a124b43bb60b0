"""The experiment config: defaults for every field, and validation.

Config files in experiments/configs/ start from `base_config()` and change
what their task needs. `validate_config` runs before anything is built, so a
bad value fails at start with a message naming the field.
"""

import dataclasses
import os
import typing

import ml_collections

from simmim_jax.training import optim
from simmim_jax import data
from simmim_jax.ops import masking
from simmim_jax.training import sharding
from simmim_jax.models.model_config import ModelConfig

# Model fields the trainer fills in from the data (see train.model_config).
DATA_DERIVED_MODEL_FIELDS = ('vocab_size', 'num_classes', 'head', 'max_len',
                             'target_len')


def base_config() -> ml_collections.ConfigDict:
  """Every top-level field with its default; task configs override these."""
  config = ml_collections.ConfigDict()
  config.seed = 0                  # parameters, dropout and data order
  # ModelConfig kwargs; vocab_size, num_classes, head, max_len and
  # target_len come from the data.
  config.model = ml_collections.ConfigDict(
      {f.name: _overridable(f) for f in dataclasses.fields(ModelConfig)
       if f.name not in DATA_DERIVED_MODEL_FIELDS})
  config.data = data.default_data_config()  # see simmim_jax/data/pipeline.py
  config.batch_size = 32           # global batch, split over the data axis
  config.eval_batch_size = 32      # global eval batch
  config.num_steps = 1000          # optimizer steps (0: evaluate only)
  config.learning_rate = 1e-3      # peak learning rate
  config.schedule = 'cosine'       # 'constant' | 'cosine' | 'rsqrt'
  config.warmup_steps = 100        # linear warmup from 0
  config.min_lr_ratio = 0.0        # cosine: final lr / peak lr
  config.weight_decay = 0.01       # AdamW decay (not biases, scales, libraries)
  config.adam_b1 = 0.9             # AdamW beta1
  config.adam_b2 = 0.98            # AdamW beta2
  config.grad_clip_norm = 1.0      # global-norm clipping; 0 disables
  config.label_smoothing = 0.0     # cross-entropy label smoothing
  config.log_every = 50            # train metrics every N steps
  config.eval_every = 500          # eval (and checkpoint) every N steps
  config.eval_split = 'validation'  # split evaluated during training
  config.test_split = 'test'       # evaluated once at the end ('' = none)
  # seq2seq: examples of the eval split greedily decoded and scored with
  # BLEU / chrF at each eval (0: the whole split; the test split is always
  # decoded whole).
  config.decode_examples = 0
  config.checkpoint_every = 500    # checkpoint every N steps (and at evals)
  config.keep_checkpoints = 2      # keep the last K checkpoints (+ the best)
  config.best_metric = 'eval_accuracy'  # ranks checkpoints for 'best'
  config.best_mode = 'max'         # 'max' | 'min' for best_metric
  config.progress = True           # progress bar with ETA on the terminal
  # Start from another run's trained parameters (its workdir; '' = none);
  # a template model gets its library per template_init.
  config.init_from = ''
  # 'supervised' (the task's labels) | 'masked': masked-token prediction on
  # the task's inputs, labels unused (classification and dual tasks); its
  # metrics are eval_masked_loss / eval_masked_accuracy.
  config.objective = 'supervised'
  config.masking = ml_collections.ConfigDict()
  config.masking.ratio = 0.15      # fraction of real positions (or segments)
  config.masking.mode = 'token'    # 'token' (80/10/10) | 'span' | 'segment'
  config.masking.mean_span = 3     # 'span': mean span length
  config.template_init = 'kmeans'  # 'kmeans' (fit to the queries) | 'random'
  config.distill_queries = 20000   # queries collected per layer for k-means
  config.trainable = 'all'         # 'all' | 'templates_and_head' (PEFT)
  config.mesh = ml_collections.ConfigDict()
  config.mesh.shape = (-1, 1)      # (data, model); -1 = remaining devices
  config.mesh.rules = sharding.default_rules()  # logical axis -> mesh axis
  return config


def _overridable(field: dataclasses.Field):
  """The field's default; a None default becomes a placeholder of the
  field's type so that --config.model.<field>=<value> can override it."""
  if field.default is None:
    kind = next(t for t in typing.get_args(field.type) if t is not type(None))
    return ml_collections.config_dict.placeholder(kind)
  return field.default


_POSITIVE = ('batch_size', 'eval_batch_size', 'log_every',
             'eval_every', 'checkpoint_every', 'keep_checkpoints',
             'distill_queries')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad or unknown field."""
  known = base_config()
  unknown = sorted(set(config.keys()) - set(known.keys()))
  if unknown:
    raise ValueError(f'unknown config field(s) {unknown}')
  if (isinstance(config.num_steps, bool) or not isinstance(config.num_steps, int)
      or config.num_steps < 0):
    raise ValueError(f'num_steps must be an integer >= 0 (0: evaluate only), '
                     f'got {config.num_steps!r}')
  if (isinstance(config.decode_examples, bool)
      or not isinstance(config.decode_examples, int)
      or config.decode_examples < 0):
    raise ValueError(f'decode_examples must be an integer >= 0 (0: the whole '
                     f'split), got {config.decode_examples!r}')
  for name in _POSITIVE:
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f'{name} must be a positive integer, got {value!r}')
  if config.schedule not in optim.SCHEDULES:
    raise ValueError(f'schedule must be one of {list(optim.SCHEDULES)}, got '
                     f'{config.schedule!r}')
  if config.warmup_steps < 0 or config.warmup_steps > config.num_steps:
    raise ValueError(f'warmup_steps must be in [0, num_steps], got '
                     f'{config.warmup_steps}')
  if not config.learning_rate > 0:
    raise ValueError(f'learning_rate must be > 0, got {config.learning_rate}')
  for name in ('weight_decay', 'grad_clip_norm', 'label_smoothing',
               'min_lr_ratio'):
    if config[name] < 0:
      raise ValueError(f'{name} must be >= 0, got {config[name]}')
  if config.label_smoothing >= 1:
    raise ValueError(f'label_smoothing must be < 1, got '
                     f'{config.label_smoothing}')
  if config.template_init not in ('kmeans', 'random'):
    raise ValueError(f"template_init must be 'kmeans' or 'random', got "
                     f'{config.template_init!r}')
  if config.trainable not in optim.TRAINABLE:
    raise ValueError(f'trainable must be one of {list(optim.TRAINABLE)}, got '
                     f'{config.trainable!r}')
  if config.trainable != 'all' and config.model.attention_kind != 'templates':
    raise ValueError("trainable='templates_and_head' needs "
                     "model.attention_kind='templates'")
  if config.init_from and not os.path.isdir(config.init_from):
    raise ValueError(f'init_from={config.init_from!r} is not a directory')
  if config.best_mode not in ('max', 'min'):
    raise ValueError(f"best_mode must be 'max' or 'min', got "
                     f'{config.best_mode!r}')
  if config.objective not in ('supervised', 'masked'):
    raise ValueError(f"objective must be 'supervised' or 'masked', got "
                     f'{config.objective!r}')
  unknown = sorted(set(config.masking.keys()) - set(known.masking.keys()))
  if unknown:
    raise ValueError(f'unknown masking field(s) {unknown}')
  if config.masking.mode not in masking.MODES:
    raise ValueError(f'masking.mode must be one of {list(masking.MODES)}, '
                     f'got {config.masking.mode!r}')
  if not 0 < config.masking.ratio < 1:
    raise ValueError(f'masking.ratio must be in (0, 1), got '
                     f'{config.masking.ratio}')
  if (isinstance(config.masking.mean_span, bool)
      or not isinstance(config.masking.mean_span, int)
      or config.masking.mean_span < 1):
    raise ValueError(f'masking.mean_span must be a positive integer, got '
                     f'{config.masking.mean_span!r}')
  if (config.objective == 'masked') != config.best_metric.startswith(
      'eval_masked_'):
    raise ValueError(
        f"best_metric={config.best_metric!r} does not fit objective="
        f"{config.objective!r}: masked runs report eval_masked_loss and "
        f"eval_masked_accuracy, supervised runs the task's metrics")
  if not config.best_metric.startswith('eval_'):
    raise ValueError(f"best_metric must be an eval metric ('eval_...'), got "
                     f'{config.best_metric!r}')
  data.validate_data_config(config.data)
  model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(config.model.keys()) - model_fields)
  if unknown:
    raise ValueError(f'unknown model field(s) {unknown}')
  # The model is fully checked once the data fixes vocab_size etc.; check the
  # rest now with placeholders so errors surface before data is built.
  fields = {'vocab_size': 2, 'max_len': config.data.max_len,
            **config.model.to_dict()}
  try:
    ModelConfig.from_dict(fields)
  except ValueError as error:
    raise ValueError(f'model: {error}') from None
