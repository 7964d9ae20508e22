//! The PVH entry: the hypervisor enters `pvh_start` in 32-bit protected mode with paging
//! off and `ebx` pointing at the `hvm_start_info`. This code notes the TSC at entry
//! (`boot_tsc`, where the boot clock starts), zeroes .bss, identity-maps the first 4 GiB
//! with 2 MiB pages (but for a 4 KiB guard page under the stack), enables SSE (CR0.EM=0,
//! CR0.MP=1, CR4.OSFXSR, CR4.OSXMMEXCPT) before any Rust runs, enters long mode and calls
//! `kmain(start_info)`.
//! It owns nothing after that: Rust replaces the GDT (`arch::cpu`) and never returns here.

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a"
    .p2align 2
    .long 4          /* name size: "Xen\0" */
    .long 4          /* desc size */
    .long 18         /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long pvh_start

    .section .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    /* The TSC at entry: where the kernel's boot clock starts (`time`). */
    rdtsc
    mov dword ptr [boot_tsc], eax
    mov dword ptr [boot_tsc + 4], edx
    /* ebx = hvm_start_info, kept until kmain. Zero .bss (page tables live there; the stack
       has its own section, which needs no zeroing) a dword at a time: `rep stosb` costs an
       emulator exit per byte under TCG. The linker script aligns both ends to 4 KiB. */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    shr ecx, 2
    xor eax, eax
    rep stosd
    mov esp, offset boot_stack_top

    /* PML4[0] -> PDPT; PDPT[0..4] -> 4 page directories; 2048 x 2 MiB = 4 GiB. */
    mov eax, offset boot_pdpt
    or eax, 3
    mov dword ptr [boot_pml4], eax
    xor ecx, ecx
1:
    mov eax, ecx
    shl eax, 12
    add eax, offset boot_pd
    or eax, 3
    mov dword ptr [boot_pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jne 1b
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83     /* present, writable, 2 MiB page */
    mov dword ptr [boot_pd + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jne 2b

    /* The 2 MiB page that holds the stack's guard page, remapped in 4 KiB pages with
       the guard left out: a stack that outgrows its size faults (reported, see
       `arch::cpu`) instead of overwriting what lies below it. */
    mov edx, offset boot_stack_guard
    shr edx, 21
    mov eax, edx
    shl eax, 21
    or eax, 3        /* present, writable, 4 KiB page */
    xor ecx, ecx
4:
    mov dword ptr [boot_pt + ecx * 8], eax
    add eax, 4096
    inc ecx
    cmp ecx, 512
    jne 4b
    mov ecx, offset boot_stack_guard
    shr ecx, 12
    and ecx, 511
    mov dword ptr [boot_pt + ecx * 8], 0
    mov eax, offset boot_pt
    or eax, 3
    mov dword ptr [boot_pd + edx * 8], eax

    mov eax, offset boot_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 0x620    /* PAE (5), OSFXSR (9), OSXMMEXCPT (10) */
    mov cr4, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100    /* EFER.LME */
    wrmsr
    mov eax, cr0
    and eax, 0xFFFFFFFB  /* clear EM (2) */
    or eax, 0x80000023   /* PG (31), NE (5), MP (1), PE (0) */
    mov cr0, eax
    lgdt [boot_gdt_ptr]
    mov eax, 0x08
    push eax
    mov eax, offset long_mode
    push eax
    retf

    .code64
long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset boot_stack_top
    mov edi, ebx
    call kmain
3:
    cli
    hlt
    jmp 3b

    .section .rodata.boot, "a"
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF   /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF   /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .data.boot, "aw"
    .p2align 3
    .global boot_tsc
boot_tsc:
    .quad 0

    .section .bss.boot, "aw", @nobits
    .p2align 12
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
boot_pt:
    .skip 4096

    .section .stack, "aw", @nobits
    .p2align 12
    .global boot_stack_guard
    .global boot_stack
    .global boot_stack_top
boot_stack_guard:
    .skip 4096
boot_stack:
    .skip {stack_size}
boot_stack_top:
"#,
    stack_size = const super::stack::SIZE,
);
