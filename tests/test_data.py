"""Data layer: ListOps generation, the TFDS builders and the grain pipelines."""

import csv
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from simmim_jax import data
from simmim_jax.data import byte_corpus
from simmim_jax.data import docstrings
from simmim_jax.data import listops
from tests import imdb_like
from tests import translation_like

tfds.disable_progress_bar()

_OPS = {'[MIN': min, '[MAX': max, '[MED': lambda a: int(np.median(a)),
        '[SM': lambda a: sum(a) % 10}


def stack_parse(source):
  """(value, depth, widest operator) by a stack machine, not the library."""
  frames, ops, depth, widest = [[]], [], 1, 0
  for token in source.split():
    if token in _OPS:
      ops.append(token)
      frames.append([])
    elif token == ']':
      args = frames.pop()
      widest = max(widest, len(args))
      assert len(args) >= 2, source
      frames[-1].append(_OPS[ops.pop()](args))
    else:
      frames[-1].append(int(token))
      depth = max(depth, len(ops) + 1)  # a leaf under len(ops) operators
  assert not ops and len(frames) == 1 and len(frames[0]) == 1, source
  return frames[0][0], depth, widest


def all_records(data_dir, name, split):
  source = tfds.builder(name, data_dir=data_dir).as_data_source(split=split)
  return source.__getitems__(list(range(len(source))))


def config(**fields):
  cfg = data.default_data_config()
  cfg.update(fields)
  return cfg


def take(loader, n):
  it = iter(loader)
  return [next(it) for _ in range(n)]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """The local builders and the test-only ones, built once."""
  path = str(tmp_path_factory.mktemp('tfds'))
  for name in ('lra_listops/tiny', 'byte_lm/small', 'stdlib_docstrings/small',
               'imdb_like/plain_text', 'imdb_like/pairs',
               'translation_like/de_en'):
    tfds.builder(name, data_dir=path).download_and_prepare()
  return path


@pytest.mark.parametrize('low,high,n', [(20, 100, 400), (100, 500, 60)])
def test_generated_listops_are_correct(low, high, n):
  examples = data.generate_listops(n, min_length=low, max_length=high, seed=3)
  assert len({s for s, _ in examples}) == n
  for source, target in examples:
    value, depth, widest = stack_parse(source)
    assert target == value == data.evaluate_listops(source)
    assert low <= len(source.split()) <= high
    assert depth <= 10 and widest <= 10


def test_generation_is_seeded():
  kwargs = dict(min_length=20, max_length=100)
  first = data.generate_listops(50, seed=0, **kwargs)
  assert first == data.generate_listops(50, seed=0, **kwargs)
  assert first != data.generate_listops(50, seed=1, **kwargs)
  assert not set(first) & set(
      data.generate_listops(50, seed=0, exclude=[s for s, _ in first],
                            **kwargs))


def test_listops_codec_and_errors():
  source = '[MAX 2 9 [MIN 4 7 ] 0 ]'
  ids = data.encode_listops(source)
  assert ids.min() >= 1 and ids.max() < listops.VOCAB_SIZE == 16
  assert data.decode_listops(ids) == source
  assert data.evaluate_listops(source) == 9
  assert data.evaluate_listops('[MED 1 4 ]') == 2  # median 2.5 rounded down
  with pytest.raises(ValueError, match=r'\[FOO'):
    data.encode_listops('[MAX 1 [FOO 2 ] ]')
  with pytest.raises(ValueError, match='max_length'):
    data.generate_listops(1, min_length=50, max_length=10, seed=0)


def test_tiny_builder_splits(data_dir):
  splits = {s: all_records(data_dir, 'lra_listops/tiny', s)
            for s in ('train', 'validation', 'test')}
  assert {s: len(r) for s, r in splits.items()} == {
      'train': 10_000, 'validation': 1_000, 'test': 1_000}
  sources = {s: {r['source'].decode() for r in records}
             for s, records in splits.items()}
  assert sum(map(len, sources.values())) == 12_000  # distinct, disjoint
  for record in splits['validation']:
    source = record['source'].decode()
    assert stack_parse(source)[0] == record['target']
    assert 20 <= len(source.split()) <= 100


def test_builder_splits_are_disjoint_when_duplicates_are_likely(tmp_path):
  # Only 400 sources have 4 tokens ([OP d d ]): splits must still not share.
  config = listops.ListOpsConfig(name='four_tokens', min_length=4,
                                 max_length=4, num_examples=(150, 50, 50))
  builder = listops.LraListops(config=config, data_dir=str(tmp_path))
  builder.download_and_prepare()
  sources = [{r['source'] for r in source.__getitems__(range(len(source)))}
             for source in builder.as_data_source(
                 split=['train', 'validation', 'test'])]
  assert [len(s) for s in sources] == [150, 50, 50]
  assert len(set.union(*sources)) == 250


def test_listops_batches(data_dir):
  ds = data.create_datasets(config(data_dir=data_dir, prepare=False),
                            global_batch_size=16, eval_batch_size=16, seed=0)
  assert (ds.task, ds.vocab_size, ds.num_classes) == ('classification', 16, 10)
  batch = take(ds.train, 1)[0]
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      'tokens': ((16, 128), np.int32), 'mask': ((16, 128), np.bool_),
      'label': ((16,), np.int32), 'weight': ((16,), np.float32)}
  np.testing.assert_array_equal(batch['mask'], batch['tokens'] > 0)
  lengths = batch['mask'].sum(1)
  np.testing.assert_array_equal(  # real tokens first, then padding
      batch['mask'], np.arange(128) < lengths[:, None])
  assert (batch['weight'] == 1).all()
  for tokens, label in zip(batch['tokens'], batch['label']):
    assert stack_parse(data.decode_listops(tokens))[0] == label


def test_truncation(data_dir):
  ds = data.create_datasets(config(data_dir=data_dir, max_len=16),
                            global_batch_size=8, eval_batch_size=8, seed=0)
  batch = take(ds.train, 1)[0]
  assert batch['tokens'].shape == (8, 16) and batch['mask'].all()


def test_eval_batches_pad_and_shard(data_dir):
  expected = {r['source'].decode()
              for r in all_records(data_dir, 'lra_listops/tiny', 'validation')}
  seen = []
  for index in range(3):
    ds = data.create_datasets(
        config(data_dir=data_dir), global_batch_size=12, eval_batch_size=96,
        seed=0, process_index=index, process_count=3)
    batches = list(ds.eval_batches('validation'))
    assert len(batches) == 11  # ceil(ceil(1000 / 3) / 32), on every process
    assert all(b['tokens'].shape == (32, 128) for b in batches)
    for b in batches:
      real = b['weight'] == 1
      assert not b['mask'][~real].any() and (b['weight'][~real] == 0).all()
      seen += [data.decode_listops(t) for t in b['tokens'][real]]
  assert len(seen) == 1000 and set(seen) == expected
  with pytest.raises(ValueError, match='not one of eval_splits'):
    next(ds.eval_batches('train'))


def write_release(directory, names=('basic_train.tsv', 'basic_val.tsv',
                                    'basic_test.tsv')):
  os.makedirs(directory, exist_ok=True)
  rows = [('( ( ( [MAX 2 9 ) ( ( [MIN 4 7 ) ] ) ) 0 ) ]', 9),
          ('( ( [SM 5 ) 8 ) ]', 3), ('( ( ( [MED 1 ) 4 ) ]', 2)]
  for name in names:
    with open(os.path.join(directory, name), 'w', newline='') as f:
      writer = csv.writer(f, delimiter='\t')
      writer.writerow(['Source', 'Target'])
      writer.writerows(rows)


def test_lra_release_import(tmp_path):
  manual = str(tmp_path / 'manual')
  write_release(manual)
  ds = data.create_datasets(
      config(data_dir=str(tmp_path / 'tfds'), builder_config='lra_release',
             manual_dir=manual, eval_splits=('test',)),
      global_batch_size=2, eval_batch_size=4, seed=0)
  batch = next(ds.eval_batches('test'))
  got = {(data.decode_listops(t), int(l))
         for t, l, w in zip(batch['tokens'], batch['label'], batch['weight'])
         if w}
  assert got == {('[MAX 2 9 [MIN 4 7 ] 0 ]', 9), ('[SM 5 8 ]', 3),
                 ('[MED 1 4 ]', 2)}


def test_lra_release_missing_files(tmp_path):
  manual = str(tmp_path / 'manual')
  write_release(manual, names=('basic_train.tsv',))
  cfg = config(data_dir=str(tmp_path / 'tfds'), builder_config='lra_release',
               manual_dir=manual)
  with pytest.raises(FileNotFoundError, match='basic_val.tsv'):
    data.create_datasets(cfg, global_batch_size=2, eval_batch_size=2, seed=0)


def test_byte_lm_split_by_file_and_round_trip(data_dir):
  builder = tfds.builder('byte_lm/small', data_dir=data_dir)
  assert builder.info.metadata['python_version']
  paths = {}
  for split in ('train', 'validation', 'test'):
    records = all_records(data_dir, 'byte_lm/small', split)
    paths[split] = {r['path'].decode() for r in records}
    assert all(byte_corpus.split_of(p) == split for p in paths[split])
  assert all(paths.values())
  assert not (paths['train'] & paths['validation'] | paths['train'] & paths[
      'test'] | paths['validation'] & paths['test'])
  records = all_records(data_dir, 'byte_lm/small', 'validation')
  path = sorted(paths['validation'])[0]
  pieces = sorted((r['offset'], r['text']) for r in records
                  if r['path'].decode() == path)
  with open(os.path.join(byte_corpus.stdlib_root(), path), 'rb') as f:
    assert b''.join(p for _, p in pieces) == f.read()

  ds = data.create_datasets(
      config(name='byte_lm', builder_config='small', data_dir=data_dir,
             max_len=2048), global_batch_size=4, eval_batch_size=4, seed=0)
  assert (ds.task, ds.vocab_size, ds.num_classes) == ('lm', 257, 0)
  batch = next(ds.eval_batches('validation'))
  assert set(batch) == {'tokens', 'mask', 'weight'}
  chunks = {r['text'] for r in records}
  for tokens, mask in zip(batch['tokens'], batch['mask']):
    assert bytes((tokens[mask] - 1).astype(np.uint8).tolist()) in chunks


def imdb_config(data_dir, **fields):
  defaults = dict(name='tfds', dataset='imdb_like/plain_text',
                  data_dir=data_dir, max_len=64, eval_splits=('test',))
  return config(**{**defaults, **fields})


def test_generic_tfds_bytes(data_dir):
  ds = data.create_datasets(imdb_config(data_dir), global_batch_size=8,
                            eval_batch_size=8, seed=0)
  assert (ds.task, ds.vocab_size, ds.num_classes) == ('classification', 257, 2)
  batches = list(ds.eval_batches('test'))
  assert len(batches) == 3 and batches[-1]['weight'].sum() == 5
  expected = {imdb_like.text('test', i).encode()[:64]: i % 2
              for i in range(21)}
  got = {}
  for b in batches:
    for t, m, label, w in zip(b['tokens'], b['mask'], b['label'], b['weight']):
      if w:
        got[bytes((t[m] - 1).astype(np.uint8).tolist())] = label
  assert got == expected


def test_generic_tfds_dual_and_ids(data_dir):
  ds = data.create_datasets(
      imdb_config(data_dir, dataset='imdb_like/pairs',
                  other_input_key='other_text'),
      global_batch_size=4, eval_batch_size=4, seed=0)
  assert ds.task == 'dual'
  batch = take(ds.train, 1)[0]
  assert batch['other_tokens'].shape == (4, 64)
  np.testing.assert_array_equal(batch['other_mask'], batch['other_tokens'] > 0)
  ds = data.create_datasets(
      imdb_config(data_dir, dataset='imdb_like/pairs', input_key='ids',
                  label_key=None, encoding='ids', vocab_size=50),
      global_batch_size=4, eval_batch_size=4, seed=0)
  assert (ds.task, ds.vocab_size) == ('lm', 51)
  got = {tuple(t[m]) for b in ds.eval_batches('test')
         for t, m, w in zip(b['tokens'], b['mask'], b['weight']) if w}
  assert got == {tuple(imdb_like.ids(i) + 1) for i in range(21)}


def test_order_is_seeded(data_dir):
  def first_batches(seed):
    ds = data.create_datasets(imdb_config(data_dir), global_batch_size=8,
                              eval_batch_size=8, seed=seed)
    return np.stack([b['tokens'] for b in take(ds.train, 12)])  # 1.5 epochs
  first = first_batches(7)
  np.testing.assert_array_equal(first, first_batches(7))
  assert not np.array_equal(first, first_batches(8))


def test_process_shards_are_disjoint_and_cover(data_dir):
  shards = []
  for index in range(2):
    ds = data.create_datasets(imdb_config(data_dir), global_batch_size=8,
                              eval_batch_size=8, seed=0, process_index=index,
                              process_count=2)
    batches = take(ds.train, 8)  # one epoch of this process's 32 examples
    assert batches[0]['tokens'].shape == (4, 64)
    shards.append({b['tokens'][i].tobytes() for b in batches for i in range(4)})
  assert len(shards[0]) == len(shards[1]) == 32
  assert not shards[0] & shards[1]
  assert len(shards[0] | shards[1]) == imdb_like.NUM_EXAMPLES['train']


def test_iterator_state_restores(data_dir):
  make = lambda: data.create_datasets(  # noqa: E731
      imdb_config(data_dir), global_batch_size=8, eval_batch_size=8, seed=0)
  it = iter(make().train)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(6)]  # crosses an epoch boundary
  resumed = iter(make().train)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_missing_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'(?s)not prepared in '
                     f'{tmp_path}.*download_and_prepare'):
    data.create_datasets(config(data_dir=str(tmp_path), prepare=False),
                         global_batch_size=2, eval_batch_size=2, seed=0)
  with pytest.raises(FileNotFoundError, match='not prepared|not found'):
    data.create_datasets(imdb_config(str(tmp_path), dataset='no_such_dataset'),
                         global_batch_size=2, eval_batch_size=2, seed=0)


@pytest.mark.parametrize('fields,kwargs,match', [
    ({'name': 'listops'}, {}, 'data.name'),
    ({'max_len': 0}, {}, 'data.max_len'),
    ({'builder_config': 'huge'}, {}, 'data.builder_config'),
    ({'batch_size': 4}, {}, 'unknown data config field'),
    ({'name': 'tfds', 'dataset': 'imdb_like/plain_text', 'encoding': 'utf16'},
     {}, 'data.encoding'),
    ({'name': 'tfds', 'dataset': 'imdb_like/plain_text', 'input_key': 'txt'},
     {}, 'data.input_key'),
    ({'train_split': 'training'}, {}, 'data.train_split'),
    ({}, {'global_batch_size': 7, 'process_count': 2, 'process_index': 0},
     'global_batch_size'),
    ({}, {'seed': -1}, 'seed'),
    ({'name': 'tfds', 'dataset': 'imdb_like/plain_text', 'target_key': 'text'},
     {}, 'target_key'),
    ({'name': 'tfds', 'dataset': 'translation_like/de_en', 'input_key': 'de',
      'target_key': 'fr', 'label_key': None}, {}, 'data.target_key'),
    ({'target_max_len': 0}, {}, 'data.target_max_len'),
])
def test_bad_config_values(data_dir, fields, kwargs, match):
  args = dict(global_batch_size=8, eval_batch_size=8, seed=0)
  args.update(kwargs)
  cfg = ml_collections.ConfigDict(dict(data_dir=data_dir, **fields))
  with pytest.raises(ValueError, match=match):
    data.create_datasets(cfg, **args)


_MODULE = '''
def documented(a, b=1):
    """Add two numbers. The rest is detail.

    More text.
    """
    return a + b


class Box:
    def method(self):
        \'\'\'Return the box, e.g. a crate!  Or not.\'\'\'
        return self

    def only_a_docstring(self):
        """Nothing else."""

    def one_line(self): "Skipped: shares a line with the def."; return 1

    def no_sentence_end(self):
        """Returns   a value
        over two lines"""
        return 2
'''


def test_docstring_examples_remove_the_docstring_and_keep_its_first_sentence():
  got = {name: (source, target) for _, name, source, target in
         docstrings.function_examples(_MODULE)}
  assert sorted(got) == ['documented', 'method', 'no_sentence_end']
  assert got['documented'] == ('def documented(a, b=1):\n    return a + b\n',
                               'Add two numbers.')
  assert got['method'] == ('def method(self):\n    return self\n',
                           'Return the box, e.g. a crate!')
  assert got['no_sentence_end'][1] == 'Returns a value over two lines'
  assert docstrings.first_sentence('Use v1.2 of it. Then go.') == (
      'Use v1.2 of it.')
  # The split is a function of (seed, module): seeded and by module.
  paths = [f'pkg/module_{i}.py' for i in range(400)]
  splits = [docstrings.split_of(p, 0) for p in paths]
  assert splits == [docstrings.split_of(p, 0) for p in paths]
  assert splits != [docstrings.split_of(p, 1) for p in paths]
  assert 0.8 < splits.count('train') / 400 < 0.97


def test_stdlib_docstrings_split_by_module(data_dir):
  modules = {}
  for split in ('train', 'validation', 'test'):
    records = all_records(data_dir, 'stdlib_docstrings/small', split)
    assert records
    modules[split] = {r['module'].decode() for r in records}
    assert all(docstrings.split_of(m, 0) == split for m in modules[split])
  assert not (modules['train'] & modules['validation'] | modules['train'] &
              modules['test'] | modules['validation'] & modules['test'])
  record = records[0]  # test split: the target left the source
  target = record['target'].decode()
  assert target and target.split()[0] not in ('"""', "'''")
  assert target not in ' '.join(record['source'].decode().split())
  ds = data.create_datasets(
      config(name='stdlib_docstrings', builder_config='small',
             data_dir=data_dir, max_len=256, target_max_len=32),
      global_batch_size=4, eval_batch_size=4, seed=0)
  assert (ds.task, ds.vocab_size, ds.start_id, ds.end_id) == (
      'seq2seq', 259, 257, 258)


def test_generic_tfds_seq2seq(data_dir):
  ds = data.create_datasets(
      imdb_config(data_dir, dataset='translation_like/de_en', input_key='de',
                  target_key='en', label_key=None, max_len=32,
                  target_max_len=16),
      global_batch_size=4, eval_batch_size=4, seed=0)
  assert ds.task == 'seq2seq'
  batch = take(ds.train, 1)[0]
  assert set(batch) == {'tokens', 'mask', 'targets', 'target_mask', 'weight'}
  assert batch['targets'].shape == (4, 16)
  assert np.all(batch['targets'][:, 0] == ds.start_id)
  pairs = set()
  for b in ds.eval_batches('test'):
    for tokens, targets, w in zip(b['tokens'], b['targets'], b['weight']):
      if w:
        pairs.add((ds.decode_text(tokens), ds.decode_text(targets)))
  # 16 target tokens: the start token and up to 15 bytes (and the end).
  assert pairs == {(de, en[:15]) for de, en in map(
      translation_like.pair, range(200, 224))}
  # The first examples in stored order, batched in that order.
  elements, batches = ds.first_examples('test', 6)
  batches = list(batches)
  assert [b['tokens'].shape for b in batches] == [(4, 32), (4, 32)]
  rows = [(ds.decode_text(t), ds.decode_text(y)) for b in batches
          for t, y, w in zip(b['tokens'], b['targets'], b['weight']) if w]
  assert rows == [(ds.feature_text(e['de']), ds.feature_text(e['en'])[:15])
                  for e in elements]
  assert len(rows) == 6 and set(rows) <= pairs
