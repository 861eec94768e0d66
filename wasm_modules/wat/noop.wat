;; noop.wasm — does nothing and exits 0 (returning from `_start` is a
;; successful exit). Used to measure the per-task overhead of the mesh.
;; No imports; a one-page memory is exported only because WASI hosts
;; conventionally look for an export named "memory".
(module
  (memory (export "memory") 1)
  (func (export "_start")))
