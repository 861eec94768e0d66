;; memory_bomb.wasm — failure fixture: grows linear memory without bound.
;;
;; Grows the memory by 16 wasm pages (1 MiB) at a time and writes one byte
;; into every 4 KiB of the new memory, so it is really committed (resident),
;; not just reserved. When `memory.grow` fails (returns -1) — because the
;; host's memory limit or wasm32's 4 GiB ceiling was reached — it executes
;; `unreachable`, so the task always ends in a trap, never in a clean exit.
;; No imports: nothing but memory.grow and stores.
(module
  ;; No maximum: the only limit is what the host allows.
  (memory (export "memory") 1)
  (func (export "_start")
    (local $old i32)   ;; page count before the grow = first new page
    (local $addr i32)  ;; byte address being touched
    (local $left i32)  ;; 4 KiB blocks still to touch in this MiB
    (loop $grow
      (local.set $old (memory.grow (i32.const 16)))
      (if (i32.eq (local.get $old) (i32.const -1))
        (then unreachable))
      ;; Touch the 256 blocks of 4 KiB in the new MiB.
      (local.set $addr (i32.shl (local.get $old) (i32.const 16)))
      (local.set $left (i32.const 256))
      (loop $touch
        (i32.store8 (local.get $addr) (i32.const 0xAA))
        (local.set $addr (i32.add (local.get $addr) (i32.const 4096)))
        (local.set $left (i32.sub (local.get $left) (i32.const 1)))
        (br_if $touch (local.get $left)))
      (br $grow))))
