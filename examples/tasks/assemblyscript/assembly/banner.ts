// banner: frames a title and some lines, for a report people read.
//
//   inputs: [TITLE, TEXT...]   every line of every TEXT input becomes a line of the box
//   env:    WIDTH (default 0: as wide as the longest line), UPPER=1 upper-cases the title
//   output:
//     +--------------+
//     | TOP REGIONS  |
//     +--------------+
//     | north 162.75 |
//     +--------------+
const args = process.argv;
if (args.length < 2) {
  process.stderr.write("banner: expected inputs TITLE and then the lines\n");
  process.exit(2);
}
let title = args[1];
if (process.env.has("UPPER") && process.env.get("UPPER") == "1") title = title.toUpperCase();

const lines: string[] = [];
for (let i = 2; i < args.length; i++) {
  const parts = args[i].split("\n");
  for (let j = 0; j < parts.length; j++) {
    const line = parts[j].replaceAll("\t", " ").trimEnd();
    if (line.length > 0) lines.push(line);
  }
}

let width = title.length;
for (let i = 0; i < lines.length; i++) width = max(width, lines[i].length);
if (process.env.has("WIDTH")) width = max(width, I32.parseInt(process.env.get("WIDTH")));

const rule = "+" + "-".repeat(width + 2) + "+\n";
let out = rule + "| " + title.padEnd(width) + " |\n" + rule;
for (let i = 0; i < lines.length; i++) out += "| " + lines[i].padEnd(width) + " |\n";
if (lines.length > 0) out += rule;
process.stdout.write(out);
