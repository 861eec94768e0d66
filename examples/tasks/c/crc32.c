/*
 * crc32: the CRC-32 (IEEE 802.3, as zip and PNG use) of a task's data, as 8 hex digits.
 *
 *   inputs: the data, joined by "\n" (e.g. ["totals"], the output of an upstream task)
 *   stdin:  the data, when there are no inputs
 *   output: e.g. "cbf43926" for "123456789"
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static uint32_t table[256];

static void make_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[n] = c;
    }
}

static uint32_t update(uint32_t crc, const unsigned char *buf, size_t len) {
    for (size_t i = 0; i < len; i++) crc = table[(crc ^ buf[i]) & 0xff] ^ (crc >> 8);
    return crc;
}

int main(int argc, char **argv) {
    make_table();
    uint32_t crc = 0xFFFFFFFFu;
    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            if (i > 1) crc = update(crc, (const unsigned char *)"\n", 1);
            crc = update(crc, (const unsigned char *)argv[i], strlen(argv[i]));
        }
    } else {
        unsigned char buf[65536];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) crc = update(crc, buf, n);
        if (ferror(stdin)) {
            fprintf(stderr, "crc32: cannot read stdin\n");
            return 2;
        }
    }
    printf("%08x\n", crc ^ 0xFFFFFFFFu);
    return 0;
}
