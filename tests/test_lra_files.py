"""LRA Image (CIFAR-10) and Retrieval (AAN) builders, from small files written
here in the formats of CIFAR-10's python release and LRA's AAN TSVs."""

import hashlib
import io
import os
import pathlib
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from simmim_jax import checks
from simmim_jax import data
from simmim_jax.data import lra_image
from simmim_jax.data import lra_retrieval

tfds.disable_progress_bar()

PER_BATCH = 20  # images per batch file: 100 training images, 20 test ones
BATCHES = lra_image.TRAIN_BATCHES + (lra_image.TEST_BATCH,)


def cifar_batches(seed=0):
  """Batch name -> dict as in CIFAR-10's python release (random pixels)."""
  rng = np.random.default_rng(seed)
  batches = {}
  for name in BATCHES:
    data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
    data[0, ::2], data[1, ::2] = 0, 255  # the ends of the range
    batches[name] = {
        b'batch_label': name.encode(),
        b'labels': rng.integers(0, 10, PER_BATCH).tolist(),
        b'data': data,
        b'filenames': [b'%s_%d.png' % (name.encode(), i)
                       for i in range(PER_BATCH)],
    }
  return batches


def release_pickle(batch):
  """A protocol 2 pickle, as the release's, naming numpy 1's module as the
  release does."""
  payload = pickle.dumps(batch, protocol=2)
  return payload.replace(b'cnumpy._core.multiarray\n',
                         b'cnumpy.core.multiarray\n')


def write_folder(manual, batches, names=BATCHES):
  folder = manual / lra_image.FOLDER
  folder.mkdir(parents=True)
  for name in names:
    (folder / name).write_bytes(release_pickle(batches[name]))


def write_tarball(manual, batches, names=BATCHES):
  manual.mkdir(parents=True, exist_ok=True)
  files = {'batches.meta': release_pickle({b'label_names': []})}
  files.update({n: release_pickle(batches[n]) for n in names})
  with tarfile.open(manual / lra_image.TARBALL, 'w:gz') as tar:
    for name, payload in files.items():
      info = tarfile.TarInfo(f'{lra_image.FOLDER}/{name}')
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))


def reference_gray(r, g, b):
  """(low, high) bounds of trunc(255.5 * (0.2989 r + 0.5870 g + 0.1140 b) /
  255), computed in float64: float32 arithmetic (TF's, ours) rounds a value
  less than 1e-4 below an integer up to it, so high is that integer there."""
  value = (0.2989 * np.asarray(r, np.float64) + 0.5870 * np.asarray(g)
           + 0.1140 * np.asarray(b)) / 255 * 255.5
  low, ceiling = np.floor(value), np.ceil(value)
  return low, np.where(ceiling - value < 1e-4, ceiling, low)


def reference_images(data):
  """(low, high) gray [n, 32, 32] of release rows [n, 3072] (R, G, B planes)."""
  planes = data.reshape(-1, 3, 32, 32)
  return reference_gray(planes[:, 0], planes[:, 1], planes[:, 2])


def build(builder, manual):
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual)))
  return builder


def records(builder, split):
  source = builder.as_data_source(split=split)
  return source.__getitems__(list(range(len(source))))


def md5_order(split, n):
  return sorted(range(n), key=lambda i: hashlib.md5(
      f'{split}{i}'.encode()).hexdigest())


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
  """The batches, their tarball and folder, and lra_image/cifar10 built from
  the tarball."""
  root = tmp_path_factory.mktemp('cifar')
  batches = cifar_batches()
  write_tarball(root / 'tar', batches)
  write_folder(root / 'folder', batches)
  builder = build(tfds.builder('lra_image', config='cifar10',
                               data_dir=str(root / 'tfds')), root / 'tar')
  train = np.concatenate([batches[n][b'data'] for n in BATCHES[:-1]])
  return {'root': root, 'batches': batches, 'builder': builder,
          'train_gray': reference_images(train),
          'train_labels': sum((batches[n][b'labels'] for n in BATCHES[:-1]),
                              [])}


def indices_of(rows, bounds):
  """Index of each record's image in `bounds` = (low, high) images; checks
  its pixels are within them (random images match one index only)."""
  low, high = bounds
  found = []
  for row in rows:
    image = row['image']
    assert image.dtype == np.uint8 and image.shape == (32, 32)
    match = ((image == low) | (image == high)).all(axis=(1, 2))
    assert match.sum() == 1
    found.append(int(np.flatnonzero(match)[0]))
  return found


def test_grayscale_is_tf_formula():
  rgb = np.random.default_rng(1).integers(0, 256, (100_000, 3), np.uint8)
  rgb = np.concatenate([rgb, [[0, 0, 0], [255, 255, 255], [255, 0, 0],
                              [0, 122, 186]]]).astype(np.uint8)
  gray = lra_image.lra_grayscale(rgb)
  assert gray.dtype == np.uint8 and gray.shape == (len(rgb),)
  low, high = reference_gray(*rgb.T)
  assert ((gray == low) | (gray == high)).all()
  # white: 0.9999 * 255.5 -> 255; red: 76.37 -> 76; 92.999996 -> 93 in
  # float32, as TF (exact arithmetic: 92).
  assert gray[-4:].tolist() == [0, 255, 76, 93]
  assert lra_image.lra_grayscale(rgb.reshape(-1, 2, 2, 3)).shape == (
      len(rgb) // 4, 2, 2)
  with pytest.raises(ValueError, match='uint8'):
    lra_image.lra_grayscale(rgb.astype(np.int32))


def test_image_splits_follow_lra(cifar):
  builder = cifar['builder']
  info = builder.info
  assert info.features['image'].shape == (32, 32)
  assert info.features['image'].np_dtype == np.uint8
  assert info.features['label'].names == list(lra_image.CLASS_NAMES)
  rows = {s: records(builder, s) for s in lra_image.SPLITS}
  assert {s: len(r) for s, r in rows.items()} == {
      'train': 90, 'validation': 10, 'test': PER_BATCH}
  # LRA's train[:90%] of TFDS cifar10: the first 90% of indices in md5 order,
  # stored in that order too.
  order = md5_order('train', 5 * PER_BATCH)
  train = indices_of(rows['train'], cifar['train_gray'])
  assert train == order[:90]
  validation = indices_of(rows['validation'], cifar['train_gray'])
  assert sorted(validation) == sorted(order[90:])
  for split, idx in (('train', train), ('validation', validation)):
    for row, i in zip(rows[split], idx):
      assert row['label'] == cifar['train_labels'][i]
  test = cifar['batches'][lra_image.TEST_BATCH]
  test_idx = indices_of(rows['test'], reference_images(test[b'data']))
  assert test_idx == md5_order('test', PER_BATCH)
  assert [r['label'] for r in rows['test']] == [test[b'labels'][i]
                                                for i in test_idx]


def test_image_folder_and_release_order(cifar, tmp_path):
  """The extracted folder gives the same data; split_order='release' cuts
  the files' order: the last 10 images of data_batch_5 validate."""
  from_folder = build(tfds.builder('lra_image/cifar10',
                                   data_dir=str(tmp_path / 'a')),
                      cifar['root'] / 'folder')
  for split in lra_image.SPLITS:
    got, want = records(from_folder, split), records(cifar['builder'], split)
    assert len(got) == len(want)
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a['image'], b['image'])
      assert a['label'] == b['label']
  config = lra_image.LraImageConfig(name='release_order',
                                    split_order='release')
  release = build(lra_image.LraImage(config=config,
                                     data_dir=str(tmp_path / 'b')),
                  cifar['root'] / 'folder')
  validation = indices_of(records(release, 'validation'), cifar['train_gray'])
  assert sorted(validation) == list(range(90, 100))
  assert len(records(release, 'train')) == 90


def test_image_missing_files(cifar, tmp_path):
  batches = cifar['batches']
  with pytest.raises(checks.MissingPathError,
                     match=f'{lra_image.TARBALL}.*{lra_image.FOLDER}'):
    build(tfds.builder('lra_image/cifar10', data_dir=str(tmp_path / 'a')),
          tmp_path / 'nothing')
  write_folder(tmp_path / 'folder', batches,
               [n for n in BATCHES if n != 'data_batch_3'])
  with pytest.raises(FileNotFoundError, match='data_batch_3'):
    build(tfds.builder('lra_image/cifar10', data_dir=str(tmp_path / 'b')),
          tmp_path / 'folder')
  write_tarball(tmp_path / 'tar', batches, BATCHES[:-1])
  with pytest.raises(checks.MissingPathError, match='holds no test_batch'):
    lra_image.read_release(tmp_path / 'tar')


class _Payload:
  def __reduce__(self):
    return os.getcwd, ()


@pytest.mark.parametrize('change,message', [
    ({b'data': np.zeros((20, 3000), np.uint8)}, r"b'data' must be uint8"),
    ({b'labels': [0] * 3 + [10] + [0] * 16}, 'record 3 has label 10'),
    ({b'labels': [0] * 19}, r"b'labels' must be 20 integers"),
    ({b'data': _Payload()}, 'refusing to load posix.getcwd|nt.getcwd'),
])
def test_image_bad_batch(cifar, tmp_path, change, message):
  batches = dict(cifar['batches'])
  batches['data_batch_2'] = {**batches['data_batch_2'], **change}
  write_folder(tmp_path, batches)
  with pytest.raises(ValueError, match=f'data_batch_2: .*({message})'):
    lra_image.read_release(pathlib.Path(tmp_path))


# Retrieval: label, id1, id2, text1, text2; a header-less TSV per split.
QUOTED = 'He said "no" -- it\'s b\'\\n\' "quoted"'
LONG = 'x' * 5000
ACCENT = 'a' * 3999 + '\u00e9tail'  # 'é' is bytes 3999-4000: cut inside it
EURO = 'b' * 3997 + '\u20acz'  # '€' is bytes 3997-3999: kept whole
AAN = {
    'new_aan_pairs.train.tsv': [
        ('1.0', 'P01-1001', 'P02-2002', QUOTED, '"starts with a quote'),
        ('0.0', 'id3', 'id4', LONG, 'short'),
        ('1', 'id5', 'id6', ACCENT, EURO),
    ],
    'new_aan_pairs.eval.tsv': [('0', 'e1', 'e2', 'one', 'two'),
                               ('1', 'e3', 'e4', 'three', 'four')],
    'new_aan_pairs.test.tsv': [('0.0', 't1', 't2', 'a', 'b')],
}


def write_aan(manual, files=AAN, ending='\n'):
  manual.mkdir(parents=True, exist_ok=True)
  for name, rows in files.items():
    with open(manual / name, 'wb') as f:
      for row in rows:
        f.write(('\t'.join(row) + ending).encode('utf-8'))


@pytest.fixture(scope='module')
def aan(tmp_path_factory):
  root = tmp_path_factory.mktemp('aan')
  write_aan(root / 'manual')
  with open(root / 'manual' / 'new_aan_pairs.eval.tsv', 'ab') as f:
    f.write(b'\n')  # a blank last line is skipped
  builder = tfds.builder('lra_retrieval', config='aan',
                         data_dir=str(root / 'tfds'))
  return build(builder, root / 'manual')


def test_retrieval_records(aan):
  features = aan.info.features
  assert sorted(features.keys()) == ['id1', 'id2', 'label', 'text1', 'text2']
  assert features['label'].num_classes == 2
  split_of = {'train': 'new_aan_pairs.train.tsv',
              'validation': 'new_aan_pairs.eval.tsv',
              'test': 'new_aan_pairs.test.tsv'}
  for split, name in split_of.items():
    got = {(r['id1'].decode(), r['id2'].decode()): r
           for r in records(aan, split)}
    assert len(got) == len(AAN[name])
    for label, id1, id2, text1, text2 in AAN[name]:
      row = got[(id1, id2)]
      assert row['label'] == int(float(label))
      for text, stored in ((text1, row['text1']), (text2, row['text2'])):
        # Cut to 4,000 bytes, less the first byte of a split 'é'.
        cut = text.encode()[:4000]
        assert stored == (cut[:-1] if text == ACCENT else cut)
        stored.decode('utf-8')
  train = {r['id1'].decode(): r for r in records(aan, 'train')}
  assert train['P01-1001']['text1'].decode() == QUOTED
  assert train['P01-1001']['text2'] == b'"starts with a quote'
  assert train['id3']['text1'] == b'x' * 4000
  assert train['id5']['text1'] == b'a' * 3999
  assert train['id5']['text2'].decode() == 'b' * 3997 + '\u20ac'


def test_retrieval_truncation_and_quotes():
  assert lra_retrieval.truncate_utf8('ab\u20ac'.encode(), 4) == 'ab'
  assert lra_retrieval.truncate_utf8('ab\u20ac'.encode(), 5) == 'ab\u20ac'
  with pytest.raises(UnicodeDecodeError):  # bad bytes before the cut
    lra_retrieval.truncate_utf8(b'a\xffbcdef', 4)
  example = lra_retrieval.parse_line(b'1.0\ta\tb\tc "d\t"e', max_bytes=3)
  assert example == {'label': 1, 'id1': 'a', 'id2': 'b', 'text1': 'c "',
                     'text2': '"e'}


def test_retrieval_crlf_file(tmp_path):
  write_aan(tmp_path, {'x.tsv': AAN['new_aan_pairs.eval.tsv']}, '\r\n')
  rows = list(lra_retrieval.iter_release(tmp_path / 'x.tsv'))
  assert [n for n, _ in rows] == [1, 2]
  assert rows[1][1] == {'label': 1, 'id1': 'e3', 'id2': 'e4',
                        'text1': 'three', 'text2': 'four'}


@pytest.mark.parametrize('line,message', [
    (b'2\ta\tb\tc\td', r':2: label must be 0 or 1'),
    (b'yes\ta\tb\tc\td', r':2: label must be 0 or 1'),
    (b'1\ta\tb\tc', r':2: expected 5 tab-separated fields'),
    (b'1\ta\tb\tc\\t\td\te', r':2: expected 5 tab-separated fields'),
    (b'1\ta\tb\tc\xff\td', r':2: text1 is not UTF-8'),
])
def test_retrieval_bad_lines(tmp_path, line, message):
  path = tmp_path / 'bad.tsv'
  path.write_bytes(b'0\ta\tb\tc\td\n' + line + b'\n')
  with pytest.raises(ValueError, match=f'bad.tsv{message}'):
    list(lra_retrieval.iter_release(path))


def test_retrieval_missing_and_bad_files(tmp_path):
  write_aan(tmp_path / 'manual', {k: v for k, v in AAN.items()
                                  if 'eval' not in k})
  with pytest.raises(FileNotFoundError, match='new_aan_pairs.eval.tsv'):
    build(tfds.builder('lra_retrieval/aan', data_dir=str(tmp_path / 'a')),
          tmp_path / 'manual')
  with pytest.raises(checks.MissingPathError, match='new_aan_pairs.train.tsv'):
    build(tfds.builder('lra_retrieval/aan', data_dir=str(tmp_path / 'b')),
          tmp_path / 'nothing')
  bad = dict(AAN)
  bad['new_aan_pairs.eval.tsv'] = [('0.5', 'e1', 'e2', 'one', 'two')]
  write_aan(tmp_path / 'bad', bad)
  with pytest.raises(ValueError, match=r'new_aan_pairs.eval.tsv:1: label'):
    build(tfds.builder('lra_retrieval/aan', data_dir=str(tmp_path / 'c')),
          tmp_path / 'bad')


def _datasets(name, builder, **fields):
  cfg = data.default_data_config()
  cfg.update(name=name, builder_config=builder.builder_config.name,
             data_dir=str(builder.data_dir_root), prepare=False, **fields)
  return data.create_datasets(cfg, global_batch_size=4, eval_batch_size=4,
                              seed=0)


def test_image_batches_are_pixel_tokens(cifar):
  datasets = _datasets('lra_image', cifar['builder'], max_len=1024)
  assert (datasets.task, datasets.vocab_size, datasets.num_classes) == (
      'classification', 257, 10)
  batch = next(datasets.eval_batches('test'))
  rows = records(cifar['builder'], 'test')[:4]
  for i, row in enumerate(rows):  # row-major pixels, id = pixel + 1
    np.testing.assert_array_equal(batch['tokens'][i],
                                  row['image'].reshape(-1).astype(int) + 1)
    assert batch['label'][i] == row['label'] and batch['mask'][i].all()


def test_retrieval_batches_feed_the_dual_encoder(aan):
  datasets = _datasets('lra_retrieval', aan, max_len=4000)
  assert (datasets.task, datasets.num_classes) == ('dual', 2)
  batch = next(datasets.eval_batches('validation'))
  rows = records(aan, 'validation')
  for i, row in enumerate(rows):
    for key, text in (('tokens', row['text1']), ('other_tokens',
                                                  row['text2'])):
      ids = np.frombuffer(text, np.uint8).astype(int) + 1
      np.testing.assert_array_equal(batch[key][i, :len(ids)], ids)
      assert not batch[key][i, len(ids):].any()
    assert batch['label'][i] == row['label']
  assert batch['weight'].tolist() == [1, 1, 0, 0]  # two examples, padded
