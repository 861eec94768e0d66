//! top: the N lines with the largest numbers, largest first.
//!
//!   inputs: [N, TEXT...]   TEXT: lines of `name<TAB>number` (e.g. an upstream task's output);
//!                          without TEXT, stdin is read instead
//!   output: the N lines with the largest second field, largest first (ties: by name)
//!
//! A line whose second field is not a number fails the task (stderr, exit status 2).
const std = @import("std");

const Row = struct { line: []const u8, name: []const u8, value: f64 };

fn larger(_: void, a: Row, b: Row) bool {
    if (a.value != b.value) return a.value > b.value;
    return std.mem.lessThan(u8, a.name, b.name);
}

fn fail(io: std.Io, comptime fmt: []const u8, args: anytype) noreturn {
    var buf: [512]u8 = undefined;
    var err = std.Io.File.stderr().writer(io, &buf);
    err.interface.print("top: " ++ fmt ++ "\n", args) catch {};
    err.interface.flush() catch {};
    std.process.exit(2);
}

pub fn main(init: std.process.Init) !void {
    const io = init.io;
    const arena = init.arena.allocator();
    const args = try init.minimal.args.toSlice(arena);
    if (args.len < 2) fail(io, "expected inputs N and then the lines (or lines on stdin)", .{});
    const n = std.fmt.parseInt(usize, args[1], 10) catch
        fail(io, "N must be a whole number, not \"{s}\"", .{args[1]});

    // The text: the remaining inputs, or stdin.
    var texts: std.ArrayList([]const u8) = .empty;
    if (args.len > 2) {
        for (args[2..]) |a| try texts.append(arena, a);
    } else {
        var buf: [4096]u8 = undefined;
        var in = std.Io.File.stdin().reader(io, &buf);
        try texts.append(arena, try in.interface.allocRemaining(arena, .unlimited));
    }

    var rows: std.ArrayList(Row) = .empty;
    for (texts.items) |text| {
        var lines = std.mem.tokenizeScalar(u8, text, '\n');
        while (lines.next()) |raw| {
            const line = std.mem.trim(u8, raw, " \r");
            if (line.len == 0) continue;
            var fields = std.mem.tokenizeAny(u8, line, "\t ");
            const name = fields.next() orelse continue;
            const number = fields.next() orelse fail(io, "no number in line \"{s}\"", .{line});
            const value = std.fmt.parseFloat(f64, number) catch
                fail(io, "\"{s}\" is not a number (line \"{s}\")", .{ number, line });
            try rows.append(arena, .{ .line = line, .name = name, .value = value });
        }
    }
    std.mem.sort(Row, rows.items, {}, larger);

    var buf: [4096]u8 = undefined;
    var out = std.Io.File.stdout().writer(io, &buf);
    for (rows.items[0..@min(n, rows.items.len)]) |row| {
        try out.interface.print("{s}\n", .{row.line});
    }
    try out.interface.flush();
}
