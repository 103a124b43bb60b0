"""Every notebook in notebooks/ runs headless from top to bottom
(ablations.ipynb on a sweep made by tests/test_sweep.py)."""

import os
import pathlib

import pytest

NOTEBOOKS = sorted(
    p for p in (pathlib.Path(__file__).parent.parent / 'notebooks').glob(
        '*.ipynb') if p.name != 'ablations.ipynb')


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
  # The quickstart trains the tiny config for 60 steps: its kernel compiles
  # at XLA's default optimisation level, which conftest.py lowers for the
  # tests' small programs (a step runs 3x faster, with the same losses).
  monkeypatch.setenv('XLA_FLAGS', os.environ.get('XLA_FLAGS', '').replace(
      '--xla_backend_optimization_level=0', '').strip())
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
