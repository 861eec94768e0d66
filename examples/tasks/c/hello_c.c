/* Hello in C: argv[1] (the task's first input) is the name, env GREETING the greeting. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    const char *greeting = getenv("GREETING");
    printf("%s, %s! (from C)\n", greeting ? greeting : "Hello", argc > 1 ? argv[1] : "world");
    return 0;
}
