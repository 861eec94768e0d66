# stats: count, sum, mean, median and standard deviation of numbers.
#
#   inputs: [COLUMN]  with CSV on stdin: the numbers of that column (header line first)
#   inputs: []        numbers on stdin, separated by whitespace
#   output: one `name<TAB>value` line each: count, sum, mean, median, stdev (2 decimals)
#
# A value that is not a number fails the task (a message on stderr, exit status 2).
import csv
import io
import statistics
import sys


def fail(message):
    print(f"stats: {message}", file=sys.stderr)
    sys.exit(2)


def numbers(text, column):
    if column is None:
        return text.split()
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and column not in rows[0]:
        fail(f"no column {column!r} in the header {', '.join(rows[0])}")
    return [row[column] for row in rows]


def main():
    column = sys.argv[1] if len(sys.argv) > 1 else None
    values = []
    for token in numbers(sys.stdin.read(), column):
        try:
            values.append(float(token))
        except ValueError:
            fail(f"{token!r} is not a number")
    if not values:
        fail("no numbers on stdin")
    out = {
        "count": len(values),
        "sum": sum(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }
    for name, value in out.items():
        print(f"{name}\t{value:.2f}" if isinstance(value, float) else f"{name}\t{value}")


main()
