// Stand-in for <objc/message.h>: metal-cpp casts objc_msgSend to each call's signature.
#pragma once
#include <objc/runtime.h>

extern "C" void objc_msgSend(void);
