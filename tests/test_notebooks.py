"""Every notebook in notebooks/ runs headless from top to bottom
(ablations.ipynb on a sweep made by tests/test_sweep.py)."""

import os
import pathlib

import pytest

NOTEBOOKS = sorted(
    p for p in (pathlib.Path(__file__).parent.parent / 'notebooks').glob(
        '*.ipynb') if p.name != 'ablations.ipynb')


# Notebooks that train for many steps (the quickstart: 60) run them 3x
# faster, with the same losses, at XLA's default optimisation level; the
# others compile more than they run (segment_attention costs 12 programs
# without running them: the same FLOPs and peak bytes at any level), so they
# keep conftest.py's quick compiles.
TRAINING = ('quickstart.ipynb',)


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, tmp_path, data_dir):
  # The kernel sees one device, as on a user's CPU (conftest.py's 8 fake
  # devices would make the quickstart train data parallel over 8).
  dropped = ['--xla_force_host_platform_device_count=8']
  if path.name in TRAINING:
    dropped.append('--xla_backend_optimization_level=0')
  monkeypatch.setenv('XLA_FLAGS', ' '.join(
      flag for flag in os.environ.get('XLA_FLAGS', '').split()
      if flag not in dropped))
  # The quickstart keeps its data in the temporary directory: point that at
  # one holding the test run's prepared lra_listops/tiny (data_dir).
  os.symlink(data_dir, tmp_path / 'simmim_jax_tfds')
  monkeypatch.setenv('TMPDIR', str(tmp_path))
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': str(path.parent)}})
  client.execute()
  errors = [o for cell in notebook.cells for o in cell.get('outputs', [])
            if o.get('output_type') == 'error']
  assert not errors
