# hello: the smallest demo. Prints one greeting line and exits with status 0.
main:
    mov esi, hello_msg
    call print_str
    xor eax, eax
    ret
hello_msg:
    .asciz "Hello from the pc32 demo guest!\n"
