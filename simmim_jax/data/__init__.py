"""Data layer: ListOps, MQAR, a byte-level LM corpus, stdlib docstrings
(seq2seq) and any TFDS dataset.

Importing this package registers the TFDS builders of catalog.py
(`lra_listops`, `mqar`, `byte_lm`, `stdlib_docstrings`, ...), so
`tfds.builder('lra_listops/tiny', data_dir=...)` works offline.
"""

from simmim_jax.data.byte_corpus import ByteLm
from simmim_jax.data.data_config import default_data_config
from simmim_jax.data.data_config import validate_data_config
from simmim_jax.data.docstrings import StdlibDocstrings
from simmim_jax.data.listops import LraListops
from simmim_jax.data.listops import decode_listops
from simmim_jax.data.listops import encode_listops
from simmim_jax.data.listops import evaluate_listops
from simmim_jax.data.listops import generate_listops
from simmim_jax.data.listops import iter_listops
from simmim_jax.data.mqar import Mqar
from simmim_jax.data.mqar import generate_mqar
from simmim_jax.data.pipeline import Datasets
from simmim_jax.data.pipeline import create_datasets

__all__ = [
    'ByteLm',
    'StdlibDocstrings',
    'LraListops',
    'decode_listops',
    'encode_listops',
    'evaluate_listops',
    'generate_listops',
    'iter_listops',
    'Mqar',
    'generate_mqar',
    'Datasets',
    'create_datasets',
    'default_data_config',
    'validate_data_config',
]
