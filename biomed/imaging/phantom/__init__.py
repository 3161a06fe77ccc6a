"""The phantom: procedural PA chest radiographs rendered from structured findings, exact truth.

- `render`: one image from findings and a seed (`render`, `render_with_info`, `render_batch`)
  and `renderer_fingerprint`, what rendered sets are keyed by;
- `shapes`: the lung-shape bank (517 real masks, or a parametric fallback without the data);
- `layers`, `scene`: what images are sampled from and drawn into;
- `anatomy`: the normal chest; `lesions`: the findings, one drawer per finding (a new finding
  goes there);
- `tool`: the `biomed phantom` command; `dataset`: ``data=phantom_iu`` (phantoms paired with
  real IU report text).

Nothing is imported here: the dataset's mechanics load without the renderer.
"""
