//! Hello in Zig: argv[1] (the task's first input) is the name, env GREETING the greeting.
const std = @import("std");

pub fn main(init: std.process.Init) !void {
    const args = try init.minimal.args.toSlice(init.arena.allocator());
    const name = if (args.len > 1) args[1] else "world";
    const greeting = init.environ_map.get("GREETING") orelse "Hello";
    var buf: [256]u8 = undefined;
    var out = std.Io.File.stdout().writer(init.io, &buf);
    try out.interface.print("{s}, {s}! (from Zig)\n", .{ greeting, name });
    try out.interface.flush();
}
