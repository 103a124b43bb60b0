"""The experiment config: defaults for every field, and validation.

Config files in experiments/configs/ start from `base_config()` and change
what their task needs. `validate_config` runs before anything is built, so a
bad value fails at start with a message naming the field.
"""

import dataclasses
import os
import typing
from typing import Optional

import ml_collections

from simmim_jax import checks
from simmim_jax import data
from simmim_jax.checks import ConfigError
from simmim_jax.data import catalog
from simmim_jax.models.model_config import ModelConfig
from simmim_jax.ops import masking
from simmim_jax.training import optim
from simmim_jax.training import sharding
from simmim_jax.training import steps

# config.precision -> the model's compute dtype (parameters stay float32).
PRECISIONS = {'float32': 'float32', 'bf16': 'bfloat16'}

# Model fields the trainer fills in from the data (see `model_config`).
DATA_DERIVED_MODEL_FIELDS = ('vocab_size', 'num_classes', 'head', 'max_len',
                             'target_len')

# The head each data task trains (masked pretraining: head 'masked').
HEAD_OF_TASK = {'classification': 'classifier', 'dual': 'dual_encoder',
                'lm': 'lm', 'seq2seq': 'seq2seq', 'recall': 'lm'}
_POSITIVE = ('batch_size', 'eval_batch_size', 'log_every',
             'eval_every', 'checkpoint_every', 'keep_checkpoints',
             'distill_queries')
# A masked run reports its loss and accuracy over the masked tokens, and a
# recall run (MQAR) over the query positions, under these names.
_COUNTERPART = {
    kind: {f'eval_{m}': f'eval_{prefix}{m}' for m in ('loss', 'accuracy')}
    for kind, prefix in steps.METRIC_PREFIX.items()}


def base_config() -> ml_collections.ConfigDict:
  """Every top-level field with its default; task configs override these."""
  config = ml_collections.ConfigDict()
  config.seed = 0                  # parameters, dropout and data order
  # ModelConfig kwargs; vocab_size, num_classes, head, max_len and
  # target_len come from the data.
  config.model = ml_collections.ConfigDict(
      {f.name: _overridable(f) for f in dataclasses.fields(ModelConfig)
       if f.name not in DATA_DERIVED_MODEL_FIELDS})
  config.data = data.default_data_config()  # see simmim_jax/data/data_config.py
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
  # 'float32' | 'bf16': bf16 matmuls and activations over float32 master
  # parameters and optimizer state; softmax, logits and loss stay float32.
  config.precision = 'float32'
  config.first_moment_dtype = 'float32'  # AdamW's first moment: or 'bfloat16'
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
  # Ranks checkpoints for 'best'; a masked run reads eval_loss and
  # eval_accuracy as their masked counterparts (see `best_metric`).
  config.best_metric = 'eval_accuracy'
  config.best_mode = 'max'         # 'max' | 'min' for best_metric
  config.progress = True           # progress bar with ETA on the terminal
  # JAX's persistent compilation cache, turned on by experiments.train: a
  # rerun or resume loads its compiled programs ('' = off;
  # $JAX_COMPILATION_CACHE_DIR, when set, wins).
  config.compilation_cache_dir = '~/.cache/simmim_jax/jax_cache'
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


def best_metric(config) -> str:
  """The eval metric that ranks a run's checkpoints.

  `config.best_metric` as the run reads it: a masked run ranks by the
  masked counterpart of 'eval_loss' / 'eval_accuracy', so a task config's
  supervised metric needs no flag when --config.objective=masked; a recall
  run (MQAR) by the query positions' ones. `config` is a ConfigDict or a
  run's saved config dict.
  """
  metric = config.get('best_metric', 'eval_accuracy')
  if config.get('objective', 'supervised') == 'masked':
    return _COUNTERPART['masked'].get(metric, metric)
  if (config.get('data') or {}).get('name') in catalog.RECALL_DATASETS:
    return _COUNTERPART['recall'].get(metric, metric)
  return metric


def model_config(config, datasets, *,
                 init_objective: Optional[str] = None) -> ModelConfig:
  """config.model plus the fields the data decides (checked if given).

  Args:
    config: the experiment config, or a run's saved one as a ConfigDict.
    datasets: what the data decides: `task`, `vocab_size`, `num_classes`
      (a data.Datasets).
    init_objective: the objective of the run `config.init_from` names (None:
      none). Masked pretraining, and fine-tuning from it, add one token id
      after the data's: the mask token.
  """
  fields = config.model.to_dict()
  if config.get('precision', 'float32') == 'bf16':
    fields['dtype'] = PRECISIONS['bf16']
  masked = config.objective == 'masked'
  derived = {'vocab_size': datasets.vocab_size + (
                 masked or init_objective == 'masked'),
             'head': 'masked' if masked else HEAD_OF_TASK[datasets.task],
             'max_len': config.data.max_len}
  if datasets.task in ('classification', 'dual'):
    derived['num_classes'] = datasets.num_classes
  if datasets.task == 'seq2seq':
    derived['target_len'] = config.data.target_max_len
  for name, value in derived.items():
    if fields.get(name) is not None and fields[name] != value:
      raise ConfigError(f'model.{name}={fields[name]!r} but the data needs '
                        f'{value!r}; leave it unset')
    fields[name] = value
  return ModelConfig.from_dict(fields)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (a ValueError) naming the first bad or unknown
  field."""
  _check_known(config, base_config())
  _check_steps(config)
  _check_optimizer(config)
  _check_precision(config)
  _check_init(config)
  _check_objective(config)
  data.validate_data_config(config.data)
  _check_model(config)


def _check_known(config, known: ml_collections.ConfigDict) -> None:
  for group, fields, known_fields in (
      ('config', config, known), ('masking', config.masking, known.masking)):
    unknown = sorted(set(fields.keys()) - set(known_fields.keys()))
    if unknown:
      raise ConfigError(f'unknown {group} field(s) {unknown}')


def _check_steps(config) -> None:
  """Step counts, cadences and sizes."""
  checks.integer(config.seed, 'seed', minimum=0)
  checks.integer(config.num_steps, 'num_steps', minimum=0,
                 hint='(0: evaluate only)')
  checks.integer(config.decode_examples, 'decode_examples', minimum=0,
                 hint='(0: the whole split)')
  for name in _POSITIVE:
    checks.integer(config[name], name)
  warmup = checks.integer(config.warmup_steps, 'warmup_steps', minimum=0)
  if warmup > config.num_steps:
    raise ConfigError(f'warmup_steps must be in [0, num_steps], got {warmup}')


def _check_optimizer(config) -> None:
  """Schedule, AdamW, clipping, label smoothing and what trains."""
  if config.schedule not in optim.SCHEDULES:
    raise ConfigError(f'schedule must be one of {list(optim.SCHEDULES)}, got '
                      f'{config.schedule!r}')
  checks.number(config.learning_rate, 'learning_rate', low_open=True)
  for name in ('weight_decay', 'grad_clip_norm', 'min_lr_ratio'):
    checks.number(config[name], name)
  checks.number(config.label_smoothing, 'label_smoothing', high=1.0)
  if config.trainable not in optim.TRAINABLE:
    raise ConfigError(f'trainable must be one of {list(optim.TRAINABLE)}, got '
                      f'{config.trainable!r}')
  if config.trainable != 'all' and config.model.attention_kind != 'templates':
    raise ConfigError("trainable='templates_and_head' needs "
                      "model.attention_kind='templates'")


def _check_precision(config) -> None:
  """The mixed-precision preset and the optimizer state's dtype."""
  if config.precision not in PRECISIONS:
    raise ConfigError(f'precision must be one of {list(PRECISIONS)}, got '
                      f'{config.precision!r}')
  if config.first_moment_dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f"first_moment_dtype must be 'float32' or 'bfloat16', "
                      f'got {config.first_moment_dtype!r}')
  if config.precision == 'bf16' and (config.model.param_dtype != 'float32'
                                     or config.model.dtype not in PRECISIONS
                                     .values()):
    raise ConfigError(
        f"precision='bf16' computes in bfloat16 over float32 parameters: "
        f'leave model.dtype ({config.model.dtype!r}) and model.param_dtype '
        f'({config.model.param_dtype!r}) unset')


def _check_init(config) -> None:
  """Starting from another run."""
  if config.template_init not in ('kmeans', 'random'):
    raise ConfigError(f"template_init must be 'kmeans' or 'random', got "
                      f'{config.template_init!r}')
  if config.init_from and not os.path.isdir(config.init_from):
    raise ConfigError(f'init_from={config.init_from!r} is not a directory')


def _check_objective(config) -> None:
  """The objective, its masking and the metric that ranks checkpoints."""
  if config.objective not in ('supervised', 'masked'):
    raise ConfigError(f"objective must be 'supervised' or 'masked', got "
                      f'{config.objective!r}')
  if config.masking.mode not in masking.MODES:
    raise ConfigError(f'masking.mode must be one of {list(masking.MODES)}, '
                      f'got {config.masking.mode!r}')
  if not 0 < config.masking.ratio < 1:  # ConfigDict keeps it a float
    raise ConfigError(f'masking.ratio must be in (0, 1), got '
                      f'{config.masking.ratio!r}')
  checks.integer(config.masking.mean_span, 'masking.mean_span')
  if config.best_mode not in ('max', 'min'):
    raise ConfigError(f"best_mode must be 'max' or 'min', got "
                      f'{config.best_mode!r}')
  if not config.best_metric.startswith('eval_'):
    raise ConfigError(f"best_metric must be an eval metric ('eval_...'), got "
                      f'{config.best_metric!r}')
  if (config.objective == 'masked') != best_metric(config).startswith(
      'eval_masked_'):
    raise ConfigError(
        f"best_metric={config.best_metric!r} does not fit objective="
        f"{config.objective!r}: masked runs report eval_masked_loss and "
        f"eval_masked_accuracy (eval_loss and eval_accuracy stand for them), "
        f"supervised runs the task's metrics")


def _check_model(config) -> None:
  """Model fields; the data-derived ones get placeholders until the data
  fixes them, so errors surface before data is built."""
  model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(config.model.keys()) - model_fields)
  if unknown:
    raise ConfigError(f'unknown model field(s) {unknown}')
  fields = {'vocab_size': 2, 'max_len': config.data.max_len,
            **config.model.to_dict()}
  try:
    ModelConfig.from_dict(fields)
  except ValueError as error:
    raise ConfigError(f'model: {error}') from None
