from inspector.entry import main_exit

main_exit()
