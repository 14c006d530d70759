/* placeholder main, replaced below */
#include "airavata.h"
int main(void) { return 0; }
