// Stand-in for Darwin's <xlocale.h>, which libc++ includes on Apple targets: the
// *_l functions it expects, here from glibc's headers.
#pragma once
#include <locale.h>
