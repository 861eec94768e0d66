// Hello in AssemblyScript: argv[1] (the task's first input) is the name, env GREETING the
// greeting. `process` comes from @assemblyscript/wasi-shim.
const name = process.argv.length > 1 ? process.argv[1] : "world";
const greeting = process.env.has("GREETING") ? process.env.get("GREETING") : "Hello";
process.stdout.write(greeting + ", " + name + "! (from AssemblyScript)\n");
