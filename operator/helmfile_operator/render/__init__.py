"""Rendering a HelmfileState into HelmfileRelease specs: pure functions, no I/O.

- `state.render_state`: the entry point.
- `values`: merging, `set` paths, digests.
- `templates`: sandboxed Jinja2 values templates.
- `dag`: `needs` order.
- `errors`: RenderError and its subclasses, each naming the spec field at fault.
"""
