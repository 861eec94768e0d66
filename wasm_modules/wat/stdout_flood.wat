;; stdout_flood.wasm — failure fixture: writes to stdout forever.
;;
;; Fills a 64 KiB buffer with lines of 63 'x' and a newline, then calls
;; fd_write(1, ...) with the whole buffer in an endless loop. If the host
;; ever reports an error from fd_write (e.g. because it caps the output
;; size) the module exits with status 1 via proc_exit; otherwise it runs
;; until the host kills it (output cap trap or timeout).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  ;; Page 0: iovec at 0 (buf ptr, len) and the nwritten slot at 8.
  ;; Page 1: the 64 KiB buffer at 65536.
  (memory (export "memory") 2)

  (func (export "_start")
    (local $i i32)
    ;; Fill the buffer: byte i = (i % 64 == 63) ? '\n' : 'x'.
    (loop $fill
      (i32.store8
        (i32.add (i32.const 65536) (local.get $i))
        (select
          (i32.const 10)   ;; '\n'
          (i32.const 120)  ;; 'x'
          (i32.eq (i32.and (local.get $i) (i32.const 63)) (i32.const 63))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 65536))))

    ;; iovec { buf = 65536, buf_len = 65536 }
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))

    (loop $flood
      ;; fd_write(fd=1, iovs=0, iovs_len=1, nwritten=8); errno 0 = success.
      (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
        (then (call $proc_exit (i32.const 1))))
      (br $flood))))
