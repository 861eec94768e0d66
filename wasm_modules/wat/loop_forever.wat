;; loop_forever.wasm — failure fixture: a pure-wasm infinite loop.
;; It never calls into the host, so only the host's own interruption
;; mechanism (timeout via epoch/fuel/metering) can stop it.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $i i64)
    (loop $spin
      ;; Busy arithmetic so the loop is not an empty branch.
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $spin))))
