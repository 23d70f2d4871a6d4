// Included first (-include): Darwin's fixed-width integer types. On arm64 macOS
// int64_t is `long long` (glibc: `long`), which decides overloads and template
// deduction (std::min(int64_t, long long) compiles there, not on Linux). glibc's
// own definitions are skipped through their include guards.
#pragma once
#define _BITS_STDINT_INTN_H 1
#define _BITS_STDINT_UINTN_H 1
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
