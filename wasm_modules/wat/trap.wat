;; trap.wasm — failure fixture: executes `unreachable` immediately, so the
;; task fails with the runtime's trap message (no exit status).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    unreachable))
