"""simmim_jax: long-sequence Transformers with segment attention and states."""

import os

import setuptools

_HERE = os.path.dirname(os.path.abspath(__file__))

setuptools.setup(
    name='simmim_jax',
    version='0.1.0',
    description=('SMI segment attention, segment states and hierarchical '
                 'encoding for long sequences, in JAX/Flax'),
    long_description=open(os.path.join(_HERE, 'README.md'),
                          encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['simmim_jax', 'simmim_jax.*',
                                               'experiments',
                                               'experiments.*']),
    python_requires='>=3.10',
    install_requires=[
        'absl-py>=2.1',
        'array_record>=0.8',    # TFDS storage format readable without TF
        'chex>=0.1.90',
        'flax>=0.12',
        'grain>=0.2.12',
        'importlib_resources',  # tensorflow-datasets needs it without TF
        'jax>=0.10',
        'matplotlib>=3.8',      # sweep summary plots
        'ml-collections>=1.0',
        'numpy>=1.26',
        'optax>=0.2.8',
        'orbax-checkpoint>=0.12',
        'sacrebleu>=2.4',       # seq2seq BLEU and chrF
        'tensorboardX>=2.6',    # TensorBoard event files without TF
        'tensorflow-datasets>=4.9.9',
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist>=3.6', 'nbclient>=0.10',
                 'ruff>=0.15', 'mypy>=1.10',
                 'nbformat>=5.10', 'ipykernel>=6.29'],
        'notebooks': ['jupyter'],
    },
)
